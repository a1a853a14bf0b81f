import ArgumentParser
import Glibc
import TunnelCrypto
import TunnelIO

// Key commands. Output formats match wg(8): one base64 key and a newline, so the two tools'
// keys and files can be used interchangeably.

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub.",
        discussion: """
            Both files are written to a temporary file, flushed to disk and then moved into place, so
            neither ever exists half-written, and the private key is never readable by others. An \
            existing key is replaced only with --force. Prints the path of the public key.
            """
    )

    @Option(help: "Directory for the key files; created (mode 0700) if missing.")
    var dir = "Keys"

    @Flag(help: "Replace NAME.key and NAME.pub if they exist.")
    var force = false

    @Argument(help: "Key name, e.g. wg0 or laptop: the files are NAME.key and NAME.pub.")
    var name: String

    func run() throws {
        guard KeyFiles.isValidName(name) else { throw CLIError.badKeyName(name) }
        try KeyFiles.makeDirectory(dir)
        let keyPath = KeyFiles.join(dir, "\(name).key")
        let publicPath = KeyFiles.join(dir, "\(name).pub")
        if !force {
            // `link` below is what guarantees no overwrite; this check only gives the clearer message
            // before anything is written.
            for path in [keyPath, publicPath] where KeyFiles.exists(path) {
                throw CLIError.fileExists(path: path)
            }
        }

        let key = PrivateKey.generate()
        var secretText = Array((key.base64 + "\n").utf8)
        defer { KeyFiles.wipe(&secretText) }
        try KeyFiles.writeAtomically(secretText, to: keyPath, mode: 0o600, replace: force)
        do {
            try KeyFiles.writeAtomically(
                Array((key.publicKey.base64 + "\n").utf8), to: publicPath, mode: 0o644, replace: force)
        } catch {
            // A .pub appeared since the check above: do not leave a private key without its pair.
            if !force { _ = unlink(keyPath) }
            throw error
        }
        try KeyFiles.syncDirectory(dir)
        print(publicPath)
    }
}

struct Genkey: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a new private key in base64 (as wg genkey).",
        discussion:
            "Redirect it into a file that only you can read, e.g. (umask 077; tunctl genkey > wg0.key)."
    )

    func run() throws {
        print(PrivateKey.generate().base64)
    }
}

struct Genpsk: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a new preshared key in base64 (as wg genpsk)."
    )

    func run() throws {
        print(PresharedKey.generate().base64)
    }
}

struct Pubkey: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read a base64 private key on stdin and print its public key (as wg pubkey)."
    )

    func run() throws {
        var input = try KeyFiles.readStandardInput(limit: 4096)
        defer { KeyFiles.wipe(&input) }
        guard let text = String(validating: input, as: UTF8.self), let key = PrivateKey(base64: text) else {
            throw CLIError.badKeyInput
        }
        print(key.publicKey.base64)
    }
}

/// File operations for key files. Contract: a key file is only ever visible under its final name
/// complete, flushed, and with its final mode.
enum KeyFiles {
    /// 1–64 characters of `[A-Za-z0-9_=+.-]`, not starting with `.` (hidden, or `..`) or `-` (an option).
    static func isValidName(_ name: String) -> Bool {
        guard (1...64).contains(name.utf8.count), let first = name.utf8.first,
            first != UInt8(ascii: "."), first != UInt8(ascii: "-")
        else { return false }
        return name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"):
                return true
            default:
                return "_=+.-".utf8.contains(byte)
            }
        }
    }

    static func join(_ directory: String, _ file: String) -> String {
        directory.hasSuffix("/") ? directory + file : directory + "/" + file
    }

    static func exists(_ path: String) -> Bool {
        var status = stat()
        return lstat(path, &status) == 0
    }

    /// Creates `path` and any missing parents with mode 0700 (keys live there); an existing
    /// directory is left as it is.
    static func makeDirectory(_ path: String) throws(CLIError) {
        var status = stat()
        if stat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFDIR else { throw .notADirectory(path: path) }
            return
        }
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw .system(path: prefix, SystemError(call: "mkdir", errno: errno))
            }
            prefix += "/"
        }
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw .notADirectory(path: path)
        }
    }

    /// Writes `bytes` to a fresh temporary file in the same directory (O_EXCL, created with
    /// `mode`), fsyncs it, then moves it to `path`: with `rename` when replacing, else with `link`,
    /// which fails rather than overwrite. The temporary file is removed on every path.
    static func writeAtomically(
        _ bytes: [UInt8], to path: String, mode: mode_t, replace: Bool
    )
        throws(CLIError)
    {
        let (fd, temporaryPath) = try createTemporary(besides: path, mode: mode)
        var temporaryIsGone = false
        defer {
            if !temporaryIsGone { _ = unlink(temporaryPath) }
        }
        do {
            defer { try? Syscall.close(fd) }
            // The umask may have cleared bits of `mode` (never added any): set it exactly.
            _ = try Syscall.check("fchmod") { fchmod(fd, mode) }
            var written = 0
            while written < bytes.count {
                // `withUnsafeBytes` rethrows untyped, so the typed error travels in a Result.
                let outcome = bytes.withUnsafeBytes { raw -> Result<Int, SystemError> in
                    // Sound: `raw` is `bytes`, and the write covers only its unwritten tail.
                    guard let base = raw.baseAddress else { return .success(0) }
                    return Result { () throws(SystemError) in
                        try Syscall.check("write") { write(fd, base + written, raw.count - written) }
                    }
                }
                written += try outcome.get()
            }
            _ = try Syscall.check("fsync") { fsync(fd) }
        } catch {
            throw .system(path: temporaryPath, error)
        }
        if replace {
            do {
                _ = try Syscall.check("rename") { rename(temporaryPath, path) }
            } catch {
                throw .system(path: path, error)
            }
            temporaryIsGone = true
        } else {
            do {
                _ = try Syscall.check("link") { link(temporaryPath, path) }
            } catch {
                if error.errno == EEXIST { throw .fileExists(path: path) }
                throw .system(path: path, error)
            }
            // The temporary name is removed by the defer; the file lives on under `path`.
        }
    }

    /// Opens a new file named `.NAME.tmp-XXXXXXXX` next to `path`, retrying if the name is taken.
    private static func createTemporary(
        besides path: String, mode: mode_t
    ) throws(CLIError) -> (
        Int32, String
    ) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[...$0]) } ?? ""
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        for _ in 0..<16 {
            let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
            let candidate = directory + "." + base + ".tmp-" + suffix
            let fd = open(candidate, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
            if fd >= 0 { return (fd, candidate) }
            let code = errno
            if code == EEXIST || code == EINTR { continue }
            throw .system(path: candidate, SystemError(call: "open", errno: code))
        }
        throw .system(path: path, SystemError(call: "open", errno: EEXIST))
    }

    /// Makes the new directory entries durable (the file data was already fsynced).
    static func syncDirectory(_ path: String) throws(CLIError) {
        do {
            let fd = try Syscall.check("open") { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
            defer { try? Syscall.close(fd) }
            _ = try Syscall.check("fsync") { fsync(fd) }
        } catch {
            throw .system(path: path, error)
        }
    }

    /// All of stdin, up to `limit` bytes; more than that is not a key (and is not kept).
    static func readStandardInput(limit: Int) throws(CLIError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: limit + 1)
        var used = 0
        while used < buffer.count {
            let outcome = buffer.withUnsafeMutableBytes { raw -> Result<Int, SystemError> in
                // Sound: reads only into the unused tail of `buffer`.
                guard let base = raw.baseAddress else { return .success(0) }
                return Result { () throws(SystemError) in
                    try Syscall.check("read") { read(STDIN_FILENO, base + used, raw.count - used) }
                }
            }
            let count: Int
            do {
                count = try outcome.get()
            } catch {
                wipe(&buffer)
                throw .system(path: "stdin", error)
            }
            if count == 0 { break }
            used += count
        }
        guard used <= limit else {
            wipe(&buffer)
            throw .badKeyInput
        }
        let input = Array(buffer[..<used])
        wipe(&buffer)
        return input
    }

    /// Zeroes a buffer that held key text. explicit_bzero is not removed as a dead store.
    static func wipe(_ buffer: inout [UInt8]) {
        buffer.withUnsafeMutableBytes { raw in
            guard let base = raw.baseAddress else { return }
            explicit_bzero(base, raw.count)
        }
    }
}
