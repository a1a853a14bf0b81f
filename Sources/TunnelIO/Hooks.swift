import CLinuxShim
import Foundation
import Glibc
import TunnelCore

/// Runs wg-quick's PreUp/PostUp/PreDown/PostDown commands and the helpers they stand beside
/// (resolvconf): one child process at a time, blocking the calling thread until it exits or its
/// time is up. Never call it on a tunnel's queues (timers, control, data): `tunctl up` calls it
/// on the main thread at start-up and on `Tunnel.stepsQueue` at shutdown.
///
/// The child gets default signal dispositions (the daemon ignores SIGTERM/SIGINT/SIGHUP, and an
/// ignored signal stays ignored across exec), an empty signal mask, its own process group (so a
/// time-out kills what it started too), stdin from /dev/null or a pipe, the daemon's stdout, and
/// no other descriptor of the daemon's (the TUN, the sockets): a PostUp that leaves a process
/// running must not keep the TUN alive after the daemon exits.
public enum ProcessRunner {
    /// How long a hook may run before it is killed (wg-quick has no limit; a daemon that waits
    /// for good on a hook cannot be stopped cleanly).
    public static let defaultTimeout: Double = 60
    /// Bytes of the child's stderr kept for the error message.
    static let tailLimit = 4096

    /// How a child ended.
    public struct Outcome: Sendable, Equatable {
        /// The exit status, or 128 + the signal number when a signal ended it (as a shell says).
        public var status: Int32
        /// Killed by us at the time-out.
        public var timedOut: Bool
        /// The last `tailLimit` bytes it wrote to stderr.
        public var stderrTail: String

        /// The stderr tail as one short line for an error message: newlines become " / ", control
        /// characters go, at most 200 characters (the end kept), and a run of 40 or more base64
        /// characters (a key the command may have printed) is replaced by "(hidden)".
        public var stderrLine: String {
            var lines = stderrTail.split(whereSeparator: { $0 == "\n" || $0 == "\r" }).map {
                String($0.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7f }.map(Character.init))
            }
            lines = lines.filter { !$0.allSatisfy(\.isWhitespace) }
            var text = lines.joined(separator: " / ")
            text = ProcessRunner.hidingKeys(text)
            if text.count > 200 { text = "..." + String(text.suffix(197)) }
            return text
        }
    }

    /// Runs `/bin/sh -c command`; `input` (if any) is written to its stdin.
    public static func shell(
        _ command: String, input: String? = nil, timeout: Double = defaultTimeout
    )
        throws(SystemError) -> Outcome
    {
        try run("/bin/sh", ["sh", "-c", command], input: input, timeout: timeout)
    }

    /// Runs `path` with `arguments` (argv[0] first); `input` (if any) goes to its stdin, which is
    /// /dev/null otherwise (at most the pipe's 64 KiB of it). stderr is copied to the daemon's stderr as
    /// it arrives and its tail kept.
    public static func run(
        _ path: String, _ arguments: [String], input: String? = nil, timeout: Double
    )
        throws(SystemError) -> Outcome
    {
        var errPipe: [Int32] = [-1, -1]
        var result = tunctl_pipe_cloexec(&errPipe)
        guard result == 0 else { throw SystemError(call: "pipe2", errno: -result) }
        defer { closeIfOpen(errPipe[0]) }
        var inPipe: [Int32] = [-1, -1]
        if input != nil {
            result = tunctl_pipe_cloexec(&inPipe)
            guard result == 0 else {
                closeIfOpen(errPipe[1])
                throw SystemError(call: "pipe2", errno: -result)
            }
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if input != nil {
            posix_spawn_file_actions_adddup2(&actions, inPipe[0], STDIN_FILENO)
        } else {
            posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], STDERR_FILENO)
        _ = tunctl_spawn_closefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signalNumber in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signalNumber) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        var pid: pid_t = 0
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let spawned = posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        closeIfOpen(errPipe[1])
        if input != nil { closeIfOpen(inPipe[0]) }
        guard spawned == 0 else {
            if input != nil { closeIfOpen(inPipe[1]) }
            throw SystemError(call: "posix_spawn \(path)", errno: spawned)
        }
        if let input {
            // A child that exits without reading its stdin must not kill the daemon: SIGPIPE is
            // ignored process-wide (as the control server also does), so the write fails instead.
            signal(SIGPIPE, SIG_IGN)
            // Small (a resolv.conf fragment): fits the pipe's 64 KiB buffer. Non-blocking, so a
            // child that neither reads nor exits is still bounded by the time-out below.
            _ = fcntl(inPipe[1], F_SETFL, O_NONBLOCK)
            var bytes = Array(input.utf8)
            bytes.withUnsafeMutableBytes { raw in
                var offset = 0
                while offset < raw.count {
                    let written = write(inPipe[1], raw.baseAddress! + offset, raw.count - offset)
                    if written < 0 && errno == EINTR { continue }
                    if written <= 0 { break }
                    offset += written
                }
            }
            bytes.removeAll()
            closeIfOpen(inPipe[1])
        }
        return waitFor(pid, stderr: errPipe[0], timeout: timeout)
    }

    /// Reads the child's stderr while it runs (without waiting for a background grandchild that
    /// keeps the pipe open), reaps it, and kills its process group once `timeout` passes.
    private static func waitFor(_ pid: pid_t, stderr fd: Int32, timeout: Double) -> Outcome {
        var tail: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var pipeOpen = true
        let deadline = monotonicSeconds() + timeout
        var status: Int32 = 0
        var timedOut = false
        func drain() {
            while pipeOpen {
                var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&descriptor, 1, 0) == 1 else { return }
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count <= 0 {
                    pipeOpen = false
                    return
                }
                buffer.withUnsafeBytes { _ = write(STDERR_FILENO, $0.baseAddress, count) }
                tail.append(contentsOf: buffer[0..<count])
                if tail.count > tailLimit { tail.removeFirst(tail.count - tailLimit) }
            }
        }
        while true {
            if pipeOpen {
                var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&descriptor, 1, 50)
            } else {
                usleep(50_000)
            }
            drain()
            var raw: Int32 = 0
            let reaped = waitpid(pid, &raw, WNOHANG)
            if reaped == pid {
                status = exitStatus(raw)
                break
            }
            if reaped < 0 && errno != EINTR {
                status = 127
                break
            }
            if monotonicSeconds() >= deadline {
                kill(-pid, SIGKILL)
                kill(pid, SIGKILL)
                while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
                status = exitStatus(raw)
                timedOut = true
                break
            }
        }
        drain()
        return Outcome(status: status, timedOut: timedOut, stderrTail: String(decoding: tail, as: UTF8.self))
    }

    /// The first executable called `name` on `PATH` (or the usual system directories when PATH is
    /// unset), as a shell would find it; nil when there is none.
    public static func find(_ name: String, path: String? = nil) -> String? {
        let search =
            path
            ?? (getenv("PATH").map { String(cString: $0) }
                ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        for directory in search.split(separator: ":") where !directory.isEmpty {
            let candidate = "\(directory)/\(name)"
            var status = stat()
            if stat(candidate, &status) == 0, status.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        return nil
    }

    /// `text` with every run of 40 or more base64 characters replaced by "(hidden)".
    public static func hidingKeys(_ text: String) -> String {
        var out = ""
        var run = ""
        func flush() {
            out += run.count >= 40 ? "(hidden)" : run
            run = ""
        }
        for character in text {
            if character.isASCII && (character.isLetter || character.isNumber || "+/=".contains(character)) {
                run.append(character)
            } else {
                flush()
                out.append(character)
            }
        }
        flush()
        return out
    }

    private static func exitStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        if signal == 0 { return (raw >> 8) & 0xff }
        return 128 + signal
    }

    private static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    private static func closeIfOpen(_ fd: Int32) {
        if fd >= 0 { close(fd) }
    }
}

/// A hook that did not succeed, as one line: which hook (kind and config line), the command's
/// exit status or time-out, and the tail of its stderr. The command text is not repeated (it may
/// hold a key); the line number says which one it was.
public struct HookError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case preUp = "PreUp"
        case postUp = "PostUp"
        case preDown = "PreDown"
        case postDown = "PostDown"
    }

    public let kind: Kind
    public let hook: Hook
    public let failure: Failure

    public enum Failure: Sendable {
        case exited(ProcessRunner.Outcome)
        case timedOut(seconds: Double)
        case cannotStart(SystemError)
    }

    public var description: String {
        let lead = "\(hook.location): [Interface] \(kind.rawValue)"
        switch failure {
        case .exited(let outcome):
            let said = outcome.stderrLine
            return "\(lead): the command failed with exit status \(outcome.status)"
                + (said.isEmpty ? " and printed nothing on stderr" : ": \(said)")
        case .timedOut(let seconds):
            return "\(lead): the command did not finish within \(Int(seconds)) s and was killed "
                + "(make it finish sooner, or start long-running work in the background with &)"
        case .cannotStart(let error):
            return "\(lead): cannot run /bin/sh: \(error)"
        }
    }
}

extension Hook {
    /// The command with every `%i` replaced by the interface name, as wg-quick does.
    public func command(interface: String) -> String {
        var out = ""
        var rest = Substring(command)
        while let range = rest.range(of: "%i") {
            out += rest[..<range.lowerBound]
            out += interface
            rest = rest[range.upperBound...]
        }
        return out + rest
    }

    /// Runs the command through `/bin/sh -c`, `%i` replaced; throws unless it exits with 0.
    public func run(
        _ kind: HookError.Kind, interface: String, timeout: Double = ProcessRunner.defaultTimeout
    )
        throws(HookError)
    {
        let outcome: ProcessRunner.Outcome
        do {
            outcome = try ProcessRunner.shell(command(interface: interface), timeout: timeout)
        } catch {
            throw HookError(kind: kind, hook: self, failure: .cannotStart(error))
        }
        if outcome.timedOut { throw HookError(kind: kind, hook: self, failure: .timedOut(seconds: timeout)) }
        if outcome.status != 0 { throw HookError(kind: kind, hook: self, failure: .exited(outcome)) }
    }
}
