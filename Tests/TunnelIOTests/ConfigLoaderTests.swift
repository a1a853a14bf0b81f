import Glibc
import Testing
import TunnelCore

@testable import TunnelIO

/// Keys made with wireguard-tools (`wg genkey | tee k | wg pubkey`, `wg genpsk`).
private enum Keys {
    static let privateKey = "IMs54KUOz697TcwUj5ZnGZ1xZD9v+8emfEwbW6teBHE="
    static let publicKey = "g0xQzQF2f14ziX9CzHzNJUrQMjjf64XDzeiO9DVyBxA="
    static let peer = "AVhbSh74bx/yjlT/R6YZsG4a+dGEQm2dp2wVgPVDfHI="
    static let psk = "szz2csI+37CUiz2vcYBp82VbpqctzNRdonm5AKUonxw="
}

/// A fresh directory under /tmp, removed with its files when the test ends.
private final class TemporaryDirectory {
    let path: String

    init() {
        var template = Array("/tmp/tunctl-loader-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { buffer in
            guard let base = buffer.baseAddress, let made = mkdtemp(base) else {
                preconditionFailure("mkdtemp failed: \(errno)")
            }
            return String(cString: made)
        }
    }

    /// Writes `text` to `name` and sets its mode exactly (not subject to the umask).
    @discardableResult
    func write(_ name: String, _ text: String, mode: mode_t = 0o600) -> String {
        let file = path + "/" + name
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "open \(file): \(errno)")
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        precondition(written == bytes.count)
        precondition(fchmod(fd, mode) == 0)
        close(fd)
        return file
    }

    deinit {
        // Test fixtures only: a shell-free recursive delete of one level plus subdirectories made here.
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name == "." || name == ".." { continue }
                let child = path + "/" + name
                if unlink(child) != 0 { rmdir(child) }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

private func loadError(_ path: String) -> ConfigLoadError? {
    do {
        _ = try ConfigLoader.load(path: path)
        Issue.record("loaded, expected an error")
        return nil
    } catch {
        return error
    }
}

@Suite struct ConfigLoaderTests {
    @Test func loadsConfigAndResolvesRelativeKeyFiles() throws {
        let dir = TemporaryDirectory()
        dir.write("wg0.key", Keys.privateKey + "\n")
        dir.write("peer.psk", Keys.psk + "\n", mode: 0o400)
        let config = dir.write(
            "wg0.conf",
            "[Interface]\nPrivateKeyFile = wg0.key\nAddress = 10.0.0.1/24\n"
                + "[Peer]\nPublicKey = \(Keys.peer)\nPresharedKeyFile = \(dir.path)/peer.psk\n",
            mode: 0o644)  // no secret inside: may be world-readable

        let loaded = try ConfigLoader.load(path: config)
        #expect(loaded.interfaceName.rawValue == "wg0")
        #expect(loaded.path == config)
        #expect(loaded.config.isResolved)
        #expect(loaded.config.privateKey?.publicKey.base64 == Keys.publicKey)
        #expect(loaded.config.peers[0].presharedKey?.key?.base64 == Keys.psk)
    }

    @Test func refusesHooksOthersMayWrite() throws {
        let dir = TemporaryDirectory()
        dir.write("wg0.key", Keys.privateKey + "\n")
        let text = "[Interface]\nPrivateKeyFile = wg0.key\nPostUp = echo %i\n"
        for mode: mode_t in [0o664, 0o646, 0o620] {
            let config = dir.write("wg0.conf", text, mode: mode)
            let error = loadError(config)
            #expect(error == .hooksWritableByOthers(path: config, mode: UInt32(mode)))
            #expect(error?.description.contains("run chmod go-w \(config)") == true)
        }
        // Readable by all is fine: the file holds no key, and reading a command runs nothing.
        let config = dir.write("wg0.conf", text, mode: 0o644)
        #expect(try ConfigLoader.load(path: config).config.interface.hooks.postUp.count == 1)
    }

    @Test func refusesPrivateKeyFileOpenToOthers() {
        let dir = TemporaryDirectory()
        let key = dir.write("wg0.key", Keys.privateKey + "\n", mode: 0o644)
        let config = dir.write("wg0.conf", "[Interface]\nPrivateKeyFile = wg0.key\n")
        let error = loadError(config)
        guard case .openToOthers(.keyFile(_, let resolved), let mode)? = error else {
            Issue.record("expected openToOthers, got \(String(describing: error))")
            return
        }
        #expect(resolved == key)
        #expect(mode == 0o644)
        #expect(
            error?.description
                == "\(config):2: [Interface] PrivateKeyFile: \(key): holds a private key but is open to group or "
                + "others (mode 0644; run chmod 600 \(key))")
        #expect(error?.description.contains(Keys.privateKey) == false)
    }

    @Test func refusesKeyFilesWithAnyGroupOrOtherBit() {
        for mode: mode_t in [0o640, 0o604, 0o620, 0o602, 0o610] {
            let dir = TemporaryDirectory()
            dir.write("wg0.key", Keys.privateKey, mode: mode)
            let config = dir.write("wg0.conf", "[Interface]\nPrivateKeyFile = wg0.key\n")
            #expect(loadError(config)?.description.contains("run chmod 600") == true, "mode \(mode)")
        }
    }

    @Test func refusesPresharedKeyFileOpenToOthers() {
        let dir = TemporaryDirectory()
        let psk = dir.write("peer.psk", Keys.psk, mode: 0o640)
        let config = dir.write(
            "wg0.conf",
            "[Interface]\nPrivateKey = \(Keys.privateKey)\n[Peer]\nPublicKey = \(Keys.peer)\nPresharedKeyFile = peer.psk\n"
        )
        #expect(
            loadError(config)?.description
                == "\(config):5: [Peer] PresharedKeyFile: \(psk): holds a preshared key but is open to group or "
                + "others (mode 0640; run chmod 600 \(psk))")
    }

    @Test func refusesConfigWithInlineKeyOpenToOthers() throws {
        let dir = TemporaryDirectory()
        let config = dir.write("wg1.conf", "[Interface]\nPrivateKey = \(Keys.privateKey)\n", mode: 0o644)
        let error = loadError(config)
        #expect(
            error?.description
                == "\(config): holds a private or preshared key but is open to group or others "
                + "(mode 0644; run chmod 600 \(config))")
        #expect(error?.description.contains(Keys.privateKey) == false)

        #expect(chmod(config, 0o600) == 0)
        #expect(try ConfigLoader.load(path: config).interfaceName.rawValue == "wg1")
    }

    @Test func missingKeyFileSaysWhereRelativePathsStart() {
        let dir = TemporaryDirectory()
        let config = dir.write("wg0.conf", "[Interface]\nPrivateKeyFile = nope.key\n")
        #expect(
            loadError(config)?.description
                == "\(config):2: [Interface] PrivateKeyFile: \(dir.path)/nope.key: cannot open: No such file or "
                + "directory (check the path; a relative path is taken from the config file's directory)")
    }

    @Test func missingConfigFile() {
        let dir = TemporaryDirectory()
        #expect(
            loadError(dir.path + "/wg0.conf")?.description
                == "\(dir.path)/wg0.conf: cannot open: No such file or directory (check the path)")
    }

    @Test func keyFileThatIsADirectoryOrGarbage() {
        let dir = TemporaryDirectory()
        #expect(mkdir(dir.path + "/sub", 0o700) == 0)
        let config = dir.write("wg0.conf", "[Interface]\nPrivateKeyFile = sub\n")
        #expect(
            loadError(config)?.description.hasSuffix(
                "\(dir.path)/sub: is a directory, not a regular file "
                    + "(point PrivateKeyFile at a regular file holding the key)") == true)

        let secretLooking = "c2VjcmV0LWJ1dC1ub3QtMzItYnl0ZXM="
        dir.write("bad.key", secretLooking)
        let other = dir.write("wg1.conf", "[Interface]\nPrivateKeyFile = bad.key\n")
        let error = loadError(other)
        #expect(
            error?.description
                == "\(other):2: [Interface] PrivateKeyFile: \"bad.key\" does not hold a valid base64 key of 32 bytes "
                + "(write one with tunctl keygen or tunctl genkey > FILE)")
        #expect(error?.description.contains(secretLooking) == false)
    }

    @Test func parseErrorsCarryThePathGiven() {
        let dir = TemporaryDirectory()
        let config = dir.write(
            "wg0.conf",
            "[Interface]\nPrivateKey = \(Keys.privateKey)\n[Peer]\nPublicKey = \(Keys.peer)\nAllowedIPs = 198.18.0.0/33\n"
        )
        #expect(
            loadError(config)?.description
                == "\(config):5: [Peer] AllowedIPs: \"198.18.0.0/33\" is not an IP prefix (use ADDRESS/LENGTH, e.g. 198.18.0.0/15)"
        )
    }

    @Test func refusesOversizedAndNonUTF8Configs() {
        let dir = TemporaryDirectory()
        // Sparse: fstat says how large it is before anything is read or allocated.
        let big = dir.write("big.conf", "#")
        #expect(truncate(big, off_t(ConfigLoader.configSizeLimit + 1)) == 0)
        #expect(
            loadError(big)?.description
                == "\(big): larger than 67108864 bytes (check that it is the right file)")
        let latin1 = dir.path + "/latin.conf"
        let fd = open(latin1, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        let bytes: [UInt8] = [0x23, 0xE9, 0x0A]  // "#é" in Latin-1
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        #expect(loadError(latin1)?.description == "\(latin1): not UTF-8 text (save it as UTF-8)")
    }

    /// A FIFO would block open (and, on SIGHUP, the queue that runs timers) until a writer came.
    @Test func refusesFIFOConfigAndKeyFilesAtOnce() {
        let dir = TemporaryDirectory()
        let fifo = dir.path + "/wg0.conf"
        #expect(mkfifo(fifo, 0o600) == 0)
        let start = currentInstant().monotonic
        #expect(
            loadError(fifo)?.description
                == "\(fifo): is a FIFO, not a regular file (give the path of a regular NAME.conf file)")
        #expect(mkfifo(dir.path + "/wg1.key", 0o600) == 0)
        let keyConfig = dir.write("wg1.conf", "[Interface]\nPrivateKeyFile = wg1.key\n")
        #expect(
            loadError(keyConfig)?.description
                == "\(keyConfig):2: [Interface] PrivateKeyFile: \(dir.path)/wg1.key: is a FIFO, not a regular file "
                + "(point PrivateKeyFile at a regular file holding the key)")
        #expect(mkfifo(dir.path + "/p.psk", 0o600) == 0)
        let pskConfig = dir.write(
            "wg2.conf",
            "[Interface]\nPrivateKey = \(Keys.privateKey)\n[Peer]\nPublicKey = \(Keys.peer)\nPresharedKeyFile = p.psk\n"
        )
        #expect(loadError(pskConfig)?.description.contains("p.psk: is a FIFO, not a regular file") == true)
        // All three refused without waiting for a writer.
        #expect(currentInstant().monotonic - start < 1_000_000_000)
    }

    @Test func refusesDevicesAsKeyFiles() {
        let dir = TemporaryDirectory()
        let config = dir.write("wg0.conf", "[Interface]\nPrivateKeyFile = /dev/zero\n")
        #expect(
            loadError(config)?.description
                == "\(config):2: [Interface] PrivateKeyFile: /dev/zero: is a character device, not a regular file "
                + "(point PrivateKeyFile at a regular file holding the key)")
    }

    /// The text read from a config or key file is zeroed after parsing: no base64 copy of a key
    /// stays in freed memory.
    @Test func wipeZeroesAStringInPlace() {
        var text = "PrivateKey = " + Keys.privateKey + "\n"
        let address = text.withUTF8 { UInt(bitPattern: $0.baseAddress) }
        ConfigLoader.wipe(&text)
        #expect(text.utf8.count == 58)
        #expect(text.utf8.allSatisfy { $0 == 0 })
        #expect(text.withUTF8 { UInt(bitPattern: $0.baseAddress) } == address)
    }

    @Test func interfaceNameComesFromTheFileNameAsInWgQuick() throws {
        #expect(try ConfigLoader.interfaceName(forConfigPath: "/etc/wireguard/wg0.conf").rawValue == "wg0")
        #expect(try ConfigLoader.interfaceName(forConfigPath: "a_b=c+d.e-f.conf").rawValue == "a_b=c+d.e-f")
        #expect(
            try ConfigLoader.interfaceName(forConfigPath: "x23456789012345.conf").rawValue
                == "x23456789012345")
        for bad in [
            "wg0.txt", "wg0", ".conf", "x234567890123456.conf", "bad name.conf", "wg/0.conf/", "wg0.conf.bak",
        ] {
            #expect(throws: ConfigLoadError.badFileName(path: bad)) {
                try ConfigLoader.interfaceName(forConfigPath: bad)
            }
        }
        #expect(
            ConfigLoadError.badFileName(path: "my vpn.conf").description
                == "'my vpn.conf': the file name must be NAME.conf, where NAME is the interface name "
                + "(1-15 characters of a-z A-Z 0-9 _ = + . -), e.g. wg0.conf")
    }

    @Test func relativeKeyPathsAreTakenFromTheConfigDirectory() {
        #expect(
            ConfigLoader.resolve("k.key", relativeTo: "/etc/wireguard/wg0.conf") == "/etc/wireguard/k.key")
        #expect(ConfigLoader.resolve("k.key", relativeTo: "conf/wg0.conf") == "conf/k.key")
        #expect(ConfigLoader.resolve("k.key", relativeTo: "wg0.conf") == "k.key")
        #expect(ConfigLoader.resolve("/abs/k.key", relativeTo: "conf/wg0.conf") == "/abs/k.key")
    }

    @Test func shellQuotingKeepsAdviceCopyable() {
        #expect(shellQuoted("/etc/wireguard/wg0.key") == "/etc/wireguard/wg0.key")
        #expect(shellQuoted("my keys/wg0.key") == "'my keys/wg0.key'")
        #expect(shellQuoted("it's") == "'it'\\''s'")
        #expect(shellQuoted("a\nb") == "'a?b'")
    }
}
