import Glibc
import Testing
import TunnelCore

@testable import TunnelIO

private func monotonic() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

private func temporaryDirectory() -> String {
    var template = Array("/tmp/tunctl-hooks-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { buffer in
        guard let base = buffer.baseAddress, let made = mkdtemp(base) else { preconditionFailure("mkdtemp") }
        return String(cString: made)
    }
}

@Suite struct HooksTests {
    @Test func exitStatusAndStderrTailComeBack() throws {
        let outcome = try ProcessRunner.shell("echo first >&2; echo 'last line' >&2; exit 3")
        #expect(outcome.status == 3)
        #expect(!outcome.timedOut)
        #expect(outcome.stderrLine == "first / last line")
    }

    @Test func aSignalIsReportedAsAShellDoes() throws {
        #expect(try ProcessRunner.shell("kill -KILL $$").status == 128 + SIGKILL)
    }

    @Test func aHookThatHangsIsKilledAtItsTimeout() throws {
        let start = monotonic()
        // The background sleep is in the hook's process group: it goes too, and does not hold
        // the stderr pipe open past the time-out.
        let outcome = try ProcessRunner.shell("sleep 30 & sleep 30", timeout: 0.3)
        let elapsed = monotonic() - start
        #expect(outcome.timedOut)
        #expect(elapsed < 5, "took \(elapsed) s")
    }

    @Test func aBackgroundChildDoesNotHoldTheHookOpen() throws {
        let start = monotonic()
        let outcome = try ProcessRunner.shell("sleep 3 >/dev/null 2>&1 & exit 0", timeout: 10)
        #expect(outcome.status == 0)
        #expect(monotonic() - start < 2)
    }

    @Test func signalsTheDaemonIgnoresAreDefaultInTheHook() throws {
        // The daemon ignores SIGHUP (Dispatch handles it); an ignored signal would stay ignored
        // across exec without POSIX_SPAWN_SETSIGDEF.
        let previous = signal(SIGHUP, SIG_IGN)
        defer { signal(SIGHUP, previous) }
        let outcome = try ProcessRunner.shell("kill -HUP $$; sleep 5", timeout: 10)
        #expect(outcome.status == 128 + SIGHUP)
        #expect(!outcome.timedOut)
    }

    @Test func theHookInheritsNoDescriptorOfTheDaemon() throws {
        // Not close-on-exec, like the TUN: a PostUp that leaves a process behind must not keep it.
        let fd = open("/dev/null", O_RDONLY)
        #expect(fd > 2)
        defer { close(fd) }
        let outcome = try ProcessRunner.shell("ls /proc/$$/fd >&2")
        let open = Set(outcome.stderrTail.split(separator: "\n").compactMap { Int32($0) })
        #expect(!open.contains(fd), "the hook sees descriptors \(open.sorted())")
        #expect(open.isSuperset(of: [0, 1, 2]))
    }

    @Test func inputReachesStdin() throws {
        let outcome = try ProcessRunner.run(
            "/bin/sh", ["sh", "-c", "cat >&2"], input: "nameserver 192.0.2.53\n", timeout: 5)
        #expect(outcome.stderrTail == "nameserver 192.0.2.53\n")
    }

    @Test func aChildThatIgnoresItsInputDoesNotKillUs() throws {
        // 256 KiB: more than a pipe holds, so the write meets a closed pipe (EPIPE, not SIGPIPE).
        let outcome = try ProcessRunner.run(
            "/bin/sh", ["sh", "-c", "exit 0"], input: String(repeating: "x", count: 256 << 10), timeout: 5)
        #expect(outcome.status == 0)
    }

    @Test func percentIIsTheInterfaceEverywhere() {
        let hook = Hook(
            command: "iptables -A FORWARD -i %i -j ACCEPT; echo %i%i %", location: ConfigLocation(file: "x", line: 1))
        #expect(hook.command(interface: "wg0") == "iptables -A FORWARD -i wg0 -j ACCEPT; echo wg0wg0 %")
    }

    @Test func aFailedHookIsOneLineNamingItsLineAndStatus() {
        let hook = Hook(command: "false", location: ConfigLocation(file: "wg0.conf", line: 9))
        do {
            try hook.run(.postUp, interface: "wg0")
            Issue.record("false succeeded")
        } catch {
            #expect(
                error.description
                    == "wg0.conf:9: [Interface] PostUp: the command failed with exit status 1 and printed nothing on stderr"
            )
        }
    }

    @Test func keysInOutputAreHidden() {
        let key = "IMs54KUOz697TcwUj5ZnGZ1xZD9v+8emfEwbW6teBHE="
        #expect(ProcessRunner.hidingKeys("wg set wg0 private-key \(key) now") == "wg set wg0 private-key (hidden) now")
        #expect(ProcessRunner.hidingKeys("/usr/sbin/iptables -A FORWARD") == "/usr/sbin/iptables -A FORWARD")
    }

    @Test func findLooksOnPath() {
        #expect(ProcessRunner.find("sh", path: "/nonexistent:/bin") == "/bin/sh")
        #expect(ProcessRunner.find("sh", path: "/nonexistent") == nil)
    }

    @Test func savedConfigIsPrivateAndReplacesTheFileWhole() throws {
        let directory = temporaryDirectory()
        defer {
            _ = unlink("\(directory)/wg0.conf")
            _ = unlink("\(directory)/link.conf")
            _ = rmdir(directory)
        }
        let target = "\(directory)/wg0.conf"
        let old = umask(0)
        defer { umask(old) }
        let fd = open(target, O_WRONLY | O_CREAT, 0o644)
        _ = write(fd, "old\n", 4)
        close(fd)
        // Through a symlink, as wg-quick's readlink -f: the real file is replaced, the link kept.
        #expect(symlink(target, "\(directory)/link.conf") == 0)
        // Made at run time, as the saved config is: the writer wipes it afterwards.
        var text = ["[Interface]", "new", ""].joined(separator: "\n")
        try ConfigFileWriter.write(&text, to: "\(directory)/link.conf")
        var status = stat()
        #expect(stat(target, &status) == 0)
        #expect(status.st_mode & 0o777 == 0o600)
        #expect(lstat("\(directory)/link.conf", &status) == 0 && status.st_mode & S_IFMT == S_IFLNK)
        let read = try String(readingFile: target)
        #expect(read == "[Interface]\nnew\n")
        #expect(text.utf8.allSatisfy { $0 == 0 })
        // Nothing else left in the directory (no temporary file).
        let entries = try FileManagerLite.entries(directory)
        #expect(entries.sorted() == ["link.conf", "wg0.conf"])
    }
}

/// Directory listing and file reading without Foundation.
private enum FileManagerLite {
    static func entries(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw SystemError(call: "opendir", errno: errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) {
                String(cString: $0.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

extension String {
    fileprivate init(readingFile path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SystemError(call: "open", errno: errno) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count <= 0 { break }
            bytes += buffer[0..<count]
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}
