import Glibc
import TunnelCore
import TunnelCrypto

/// A Linux interface name as wg-quick accepts it: 1–15 characters of `[a-zA-Z0-9_=+.-]`
/// (IFNAMSIZ is 16 with the NUL). Validated once here; everything downstream takes this type.
public struct InterfaceName: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    public init?(_ text: some StringProtocol) {
        guard (1...15).contains(text.utf8.count),
            text.utf8.allSatisfy({ InterfaceName.allowed.contains($0) })
        else { return nil }
        rawValue = String(text)
    }

    public var description: String { rawValue }

    private static let allowed: Set<UInt8> = Set(
        Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=+.-".utf8))
}

/// A config read from disk with every key file read and checked: ready to bring up.
public struct LoadedConfig: Sendable {
    /// From the file name: `/etc/wireguard/wg0.conf` is `wg0`.
    public let interfaceName: InterfaceName
    /// The path as given.
    public let path: String
    /// Resolved: `config.isResolved` is true.
    public let config: TunnelConfig
    /// The `PrivateKeyFile` the private key came from, if it did (SaveConfig writes the reference
    /// back rather than the key while the key is unchanged).
    public var privateKeyFile: KeyFileReference? = nil
}

/// Which file a load error is about: the config itself, or a key file it names.
public enum LoadedFile: Hashable, Sendable {
    case config(path: String)
    case keyFile(KeyFileReference, resolvedPath: String)

    var path: String {
        switch self {
        case .config(let path): return path
        case .keyFile(_, let resolvedPath): return resolvedPath
        }
    }

    /// How a message about this file begins: `wg0.conf` or
    /// `wg0.conf:3: [Interface] PrivateKeyFile: keys/wg0.key`.
    var lead: String {
        switch self {
        case .config(let path): return shellQuoted(path)
        case .keyFile(let reference, let resolvedPath):
            return "\(reference.location): [\(reference.section.rawValue)] \(reference.key.rawValue): "
                + shellQuoted(resolvedPath)
        }
    }
}

/// Why a config could not be loaded. Each description is one line that says what to do; none
/// holds a secret (file contents are never carried).
public enum ConfigLoadError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The file name is not `NAME.conf` with a valid interface name.
    case badFileName(path: String)
    case cannotOpen(LoadedFile, errno: Int32)
    case cannotRead(LoadedFile, errno: Int32)
    /// A FIFO, device, directory or socket: refused before any read, which could block for good.
    case notRegularFile(LoadedFile, kind: String)
    case tooLarge(LoadedFile, limit: Int)
    case notUTF8(LoadedFile)
    /// A file holding a secret (a key file, or a config with an inline key) has group or other
    /// permission bits set.
    case openToOthers(LoadedFile, mode: UInt32)
    /// A config with PreUp/PostUp/PreDown/PostDown commands (run as root) that group or others
    /// may write: anyone who can edit it could run commands as root.
    case hooksWritableByOthers(path: String, mode: UInt32)
    case invalid(ConfigError)

    public var description: String {
        switch self {
        case .badFileName(let path):
            return "\(shellQuoted(path)): the file name must be NAME.conf, where NAME is the interface name "
                + "(1-15 characters of a-z A-Z 0-9 _ = + . -), e.g. wg0.conf"
        case .cannotOpen(let file, let code):
            let advice: String
            switch code {
            case ENOENT:
                if case .keyFile = file {
                    advice = "check the path; a relative path is taken from the config file's directory"
                } else {
                    advice = "check the path"
                }
            case EACCES, EPERM: advice = "run tunctl as a user that may read it"
            default: advice = "check the file"
            }
            return "\(file.lead): cannot open: \(SystemError.message(for: code)) (\(advice))"
        case .cannotRead(let file, let code):
            return
                "\(file.lead): cannot read: \(SystemError.message(for: code)) (check the file and the disk)"
        case .notRegularFile(let file, let kind):
            let advice: String
            switch file {
            case .config: advice = "give the path of a regular NAME.conf file"
            case .keyFile(let reference, _):
                advice = "point \(reference.key.rawValue) at a regular file holding the key"
            }
            return "\(file.lead): is a \(kind), not a regular file (\(advice))"
        case .tooLarge(let file, let limit):
            return "\(file.lead): larger than \(limit) bytes (check that it is the right file)"
        case .notUTF8(let file):
            return "\(file.lead): not UTF-8 text (save it as UTF-8)"
        case .openToOthers(let file, let mode):
            let what: String
            switch file {
            case .config: what = "holds a private or preshared key but"
            case .keyFile(let reference, _):
                what =
                    reference.key == .presharedKeyFile
                    ? "holds a preshared key but" : "holds a private key but"
            }
            return "\(file.lead): \(what) is open to group or others "
                + "(mode \(octal(mode)); run chmod 600 \(shellQuoted(file.path)))"
        case .hooksWritableByOthers(let path, let mode):
            return "\(shellQuoted(path)): holds PreUp/PostUp/PreDown/PostDown commands, which run as root, but "
                + "group or others may write it (mode \(octal(mode)); run chmod go-w \(shellQuoted(path)))"
        case .invalid(let error):
            return error.description
        }
    }
}

/// Reads config files. The only place tunctl touches a config or key file on disk.
public enum ConfigLoader {
    /// Room for a config of 100,000 peers (about 150 bytes each); anything bigger is the wrong file.
    /// Memory is taken as the file's size says, not up front.
    public static let configSizeLimit = 64 << 20
    /// A key file holds 44 base64 characters and a newline; allow comments-free slack, no more.
    public static let keyFileSizeLimit = 4096

    /// Reads `path`, takes the interface name from its file name, parses it, reads every key file
    /// it names (relative paths are relative to the config's directory) and checks that no file
    /// holding a secret is open to group or others.
    public static func load(path: String) throws(ConfigLoadError) -> LoadedConfig {
        Endpoint.installInterfaceNames()
        let interfaceName = try interfaceName(forConfigPath: path)
        let configFile = LoadedFile.config(path: path)
        var (text, mode) = try readText(configFile, limit: configSizeLimit)
        // The text may hold inline keys: zeroed once parsed, whatever the outcome. The config keeps
        // each key once, in binary (SecretKey); no text form of it outlives this function.
        defer { wipe(&text) }
        let parsed: TunnelConfig
        do {
            parsed = try TunnelConfig.parse(text, fileName: path)
        } catch {
            throw .invalid(error)
        }
        if parsed.hasInlineSecret && mode & 0o077 != 0 {
            throw .openToOthers(configFile, mode: mode)
        }
        if !parsed.interface.hooks.isEmpty && mode & 0o022 != 0 {
            throw .hooksWritableByOthers(path: path, mode: mode)
        }
        var contents: [KeyFileReference: String] = [:]
        defer {
            for reference in contents.keys { wipe(&contents[reference]!) }
        }
        for reference in parsed.keyFileReferences {
            let keyFile = LoadedFile.keyFile(
                reference, resolvedPath: resolve(reference.path, relativeTo: path))
            let (keyText, keyMode) = try readText(keyFile, limit: keyFileSizeLimit)
            if keyMode & 0o077 != 0 { throw .openToOthers(keyFile, mode: keyMode) }
            contents[reference] = keyText
        }
        do {
            let resolved = try parsed.resolvingKeyFiles(contents)
            var loaded = LoadedConfig(interfaceName: interfaceName, path: path, config: resolved)
            if case .file(let reference) = parsed.interface.privateKey { loaded.privateKeyFile = reference }
            return loaded
        } catch {
            throw .invalid(error)
        }
    }

    /// `wg0` for `.../wg0.conf`, as wg-quick derives it.
    public static func interfaceName(forConfigPath path: String) throws(ConfigLoadError) -> InterfaceName {
        let fileName = path.split(separator: "/", omittingEmptySubsequences: false).last ?? ""
        guard fileName.hasSuffix(".conf"), let name = InterfaceName(fileName.dropLast(".conf".count)) else {
            throw .badFileName(path: path)
        }
        return name
    }

    /// `keyPath` as written in the config at `configPath`: absolute paths stay, relative ones are
    /// taken from the config's directory.
    public static func resolve(_ keyPath: String, relativeTo configPath: String) -> String {
        if keyPath.hasPrefix("/") { return keyPath }
        guard let slash = configPath.lastIndex(of: "/") else { return keyPath }
        return String(configPath[...slash]) + keyPath
    }

    /// The file's text and permission bits. Mode is taken with fstat on the open descriptor, so it
    /// is the mode of the file actually read. The read buffer is zeroed before it is released,
    /// since it may hold a key (the returned String cannot be zeroed; it is dropped soon after).
    private static func readText(_ file: LoadedFile, limit: Int) throws(ConfigLoadError) -> (String, UInt32) {
        let fd: Int32
        do {
            // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, for good
            // (and on the control queue, on SIGHUP); a regular file's reads ignore the flag.
            fd = try Syscall.check("open") { open(file.path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY) }
        } catch {
            throw .cannotOpen(file, errno: error.errno)
        }
        defer { try? Syscall.close(fd) }

        var status = stat()
        do {
            _ = try Syscall.check("fstat") { fstat(fd, &status) }
        } catch {
            throw .cannotRead(file, errno: error.errno)
        }
        let type = status.st_mode & S_IFMT
        guard type == S_IFREG else { throw .notRegularFile(file, kind: fileKind(type)) }
        guard Int(status.st_size) <= limit else { throw .tooLarge(file, limit: limit) }

        // Sized from fstat, plus one byte, which tells "grew past the limit" from "exactly at it";
        // grown (the old buffer zeroed) only if the file grows while it is read.
        var buffer = [UInt8](repeating: 0, count: Int(status.st_size) + 1)
        defer { wipe(&buffer) }
        var used = 0
        while true {
            if used == buffer.count {
                guard buffer.count <= limit else { break }
                var larger = [UInt8](repeating: 0, count: min(limit + 1, buffer.count * 2))
                larger.replaceSubrange(0..<used, with: buffer[0..<used])
                wipe(&buffer)
                buffer = larger
            }
            // `withUnsafeMutableBytes` rethrows untyped, so the typed error travels in a Result.
            let outcome = buffer.withUnsafeMutableBytes { raw -> Result<Int, SystemError> in
                // Sound: `raw` is the whole buffer (never empty) and the read stays in its unused tail.
                guard let base = raw.baseAddress else { return .success(0) }
                return Result { () throws(SystemError) in
                    try Syscall.check("read") { read(fd, base + used, raw.count - used) }
                }
            }
            let count: Int
            do {
                count = try outcome.get()
            } catch {
                throw .cannotRead(file, errno: error.errno)
            }
            if count == 0 { break }
            used += count
        }
        guard used <= limit else { throw .tooLarge(file, limit: limit) }
        guard let text = String(validating: buffer[..<used], as: UTF8.self) else { throw .notUTF8(file) }
        return (text, UInt32(status.st_mode) & 0o7777)
    }

    /// Zeroes a string's bytes before it is released (a freed block keeps its contents). Sound for
    /// a string this code made and holds alone (e.g. the text read above): `withUTF8` gives its
    /// own native storage, which no other value shares.
    static func wipe(_ text: inout String) {
        text.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            explicit_bzero(UnsafeMutableRawPointer(mutating: base), bytes.count)
        }
    }

    private static func wipe(_ buffer: inout [UInt8]) {
        buffer.withUnsafeMutableBytes { raw in
            // explicit_bzero, unlike memset, is not removed as a dead store before the array is freed.
            guard let base = raw.baseAddress else { return }
            explicit_bzero(base, raw.count)
        }
    }
}

extension TunnelConfig {
    /// Whether the text itself held a private or preshared key (so the file must be private).
    fileprivate var hasInlineSecret: Bool {
        if case .inline = interface.privateKey { return true }
        return peers.contains { peer in
            if case .inline? = peer.presharedKey { return true }
            return false
        }
    }
}

/// `path` as it can be pasted into a shell, for messages that say which command to run: bare when
/// it is plain, else in single quotes, with control characters shown as `?` to keep one line.
public func shellQuoted(_ path: String) -> String {
    let safe = path.utf8.allSatisfy { byte in
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "/._-+=:@,%".utf8.contains(byte)
        }
    }
    if safe && !path.isEmpty { return path }
    var quotedPath = "'"
    for scalar in path.unicodeScalars {
        if scalar == "'" {
            quotedPath += "'\\''"
        } else if scalar.properties.generalCategory == .control {
            quotedPath += "?"
        } else {
            quotedPath.unicodeScalars.append(scalar)
        }
    }
    return quotedPath + "'"
}

/// How a message names a file type that is not a regular file.
private func fileKind(_ type: mode_t) -> String {
    switch type {
    case S_IFIFO: return "FIFO"
    case S_IFDIR: return "directory"
    case S_IFCHR: return "character device"
    case S_IFBLK: return "block device"
    case S_IFSOCK: return "socket"
    default: return "special file"
    }
}

private func octal(_ mode: UInt32) -> String {
    let digits = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
