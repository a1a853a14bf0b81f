import Foundation
import Testing

// These tests run the built `tunctl` binary as a user would, and check it against `wg` from
// wireguard-tools, the reference for key formats.

/// The result of running a program to completion.
private struct Run {
    let status: Int32
    let stdout: String
    let stderr: String
}

private enum Tools {
    /// `tunctl` next to this test bundle: SwiftPM puts the xctest binary and the products in the
    /// same build directory (`.build/<triple>/debug/`). `TUNCTL_BINARY` overrides it.
    static let tunctl: String? = {
        var candidates: [String] = []
        if let override = ProcessInfo.processInfo.environment["TUNCTL_BINARY"] { candidates.append(override) }
        // /proc/self/exe is the test runner itself (no symlinks, no relative argv[0]).
        if let runner = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(sibling(of: runner))
        }
        for bundle in Bundle.allBundles {
            candidates.append(sibling(of: bundle.bundlePath))
            if let executable = bundle.executablePath { candidates.append(sibling(of: executable)) }
        }
        candidates.append(sibling(of: CommandLine.arguments[0]))
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// `wg` from wireguard-tools, looked up on PATH and in the sbin directories Debian uses.
    static let wg: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories =
            path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin", "/sbin", "/bin"]
        return directories.map { $0 + "/wg" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()

    /// In CI a missing `wg` is a failure, not a reason to skip.
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// `tunctl` beside the test runner `.../debug/tunctlPackageTests.xctest` (a file on Linux; on
    /// macOS a bundle directory with the binary inside, so cut the path at the bundle).
    private static func sibling(of path: String) -> String {
        let components = URL(fileURLWithPath: path).resolvingSymlinksInPath().pathComponents
        let directory: [String]
        if let bundle = components.lastIndex(where: { $0.hasSuffix(".xctest") }) {
            directory = Array(components[..<bundle])
        } else {
            directory = Array(components.dropLast())
        }
        return NSString.path(withComponents: directory + ["tunctl"])
    }
}

/// Runs `executable` with `arguments`, feeding `input` on stdin.
private func run(
    _ executable: String, _ arguments: [String], input: String = "", cwd: String? = nil
) throws
    -> Run
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let cwd { process.currentDirectoryURL = URL(fileURLWithPath: cwd) }
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    // Outputs here are a few lines, far below a pipe's buffer, so reading one after the other is safe.
    let out = stdout.fileHandleForReading.readDataToEndOfFile()
    let err = stderr.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return Run(
        status: process.terminationStatus, stdout: String(decoding: out, as: UTF8.self),
        stderr: String(decoding: err, as: UTF8.self))
}

/// Runs the built tunctl; records a failure (not a skip) when it cannot be found.
private func tunctl(_ arguments: [String], input: String = "", cwd: String? = nil) throws -> Run {
    let binary = try #require(
        Tools.tunctl, "built tunctl not found next to the test bundle; set TUNCTL_BINARY")
    return try run(binary, arguments, input: input, cwd: cwd)
}

private func wg(_ arguments: [String], input: String = "") throws -> Run {
    let binary = try #require(Tools.wg, "wg (wireguard-tools) is not installed; CI=true requires it")
    return try run(binary, arguments, input: input)
}

private func mode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return try #require(attributes[.posixPermissions] as? Int)
}

private func contents(_ path: String) throws -> String {
    try String(contentsOfFile: path, encoding: .utf8)
}

/// A directory under /tmp, removed when the test ends.
private final class Scratch {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "tunctl-keys-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A one-line error on stderr and nothing on stdout.
private func expectOneLineError(
    _ result: Run, containing text: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(result.status != 0, sourceLocation: sourceLocation)
    #expect(result.stdout.isEmpty, sourceLocation: sourceLocation)
    #expect(result.stderr.hasSuffix("\n"), sourceLocation: sourceLocation)
    #expect(
        result.stderr.dropLast().contains("\n") == false, "more than one line: \(result.stderr)",
        sourceLocation: sourceLocation)
    #expect(result.stderr.contains(text), "stderr: \(result.stderr)", sourceLocation: sourceLocation)
}

private let needsWg = ConditionTrait.enabled(
    if: Tools.wg != nil || Tools.isCI, "wg (wireguard-tools) is not installed")

@Suite struct KeyCommandTests {
    // MARK: keygen

    @Test(needsWg) func keygenWritesPrivateKey0600AndMatchingPublicKey() throws {
        let scratch = try Scratch()
        let dir = scratch.path + "/Keys/nested"
        let result = try tunctl(["keygen", "--dir", dir, "wg0"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout == dir + "/wg0.pub\n")
        #expect(result.stderr.isEmpty)

        #expect(try mode(dir + "/wg0.key") == 0o600)
        #expect(try mode(dir + "/wg0.pub") == 0o644)
        #expect(try mode(dir) == 0o700)
        let privateKey = try contents(dir + "/wg0.key")
        let publicKey = try contents(dir + "/wg0.pub")
        #expect(privateKey.count == 45 && privateKey.hasSuffix("=\n"))
        #expect(try wg(["pubkey"], input: privateKey).stdout == publicKey)
        #expect(try tunctl(["pubkey"], input: privateKey).stdout == publicKey)
        // Nothing but the two files: no temporary file left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["wg0.key", "wg0.pub"])
    }

    @Test func keygenNeverOverwritesWithoutForce() throws {
        let scratch = try Scratch()
        let first = try tunctl(["keygen", "--dir", scratch.path, "peer"])
        #expect(first.status == 0)
        let key = try contents(scratch.path + "/peer.key")

        let second = try tunctl(["keygen", "--dir", scratch.path, "peer"])
        expectOneLineError(
            second, containing: "\(scratch.path)/peer.key already exists (use --force to replace it")
        #expect(try contents(scratch.path + "/peer.key") == key)

        let forced = try tunctl(["keygen", "--dir", scratch.path, "--force", "peer"])
        #expect(forced.status == 0)
        #expect(try contents(scratch.path + "/peer.key") != key)
        #expect(try mode(scratch.path + "/peer.key") == 0o600)
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted() == [
                "peer.key", "peer.pub",
            ])
    }

    @Test func keygenRefusesWhenOnlyThePublicKeyExists() throws {
        let scratch = try Scratch()
        try "stale\n".write(toFile: scratch.path + "/a.pub", atomically: false, encoding: .utf8)
        let result = try tunctl(["keygen", "--dir", scratch.path, "a"])
        expectOneLineError(result, containing: "a.pub already exists")
        #expect(!FileManager.default.fileExists(atPath: scratch.path + "/a.key"))
    }

    @Test func keygenKeepsTheKeyPrivateUnderAnOpenUmask() throws {
        let scratch = try Scratch()
        let binary = try #require(Tools.tunctl)
        let result = try run(
            "/bin/sh", ["-c", "umask 000 && exec \"$0\" keygen --dir \"$1\" open", binary, scratch.path])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(try mode(scratch.path + "/open.key") == 0o600)
    }

    @Test(arguments: ["../escape", ".hidden", "-x", "a/b", "", String(repeating: "n", count: 65)])
    func keygenRejectsNamesThatAreNotPlainFileNames(name: String) throws {
        let scratch = try Scratch()
        let result = try tunctl(["keygen", "--dir", scratch.path, "--", name])
        expectOneLineError(result, containing: "is not a key name")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).isEmpty)
    }

    @Test func keygenDefaultsToKeysInTheWorkingDirectory() throws {
        let scratch = try Scratch()
        let result = try tunctl(["keygen", "host"], cwd: scratch.path)
        #expect(result.stdout == "Keys/host.pub\n")
        #expect(try mode(scratch.path + "/Keys/host.key") == 0o600)
    }

    // MARK: genkey / pubkey / genpsk against wg

    @Test(needsWg) func genkeyPipedToWgPubkeyEqualsTunctlPubkey() throws {
        for _ in 0..<8 {
            let generated = try tunctl(["genkey"])
            #expect(generated.status == 0)
            #expect(generated.stdout.count == 45 && generated.stdout.hasSuffix("\n"))
            let fromWg = try wg(["pubkey"], input: generated.stdout)
            #expect(fromWg.status == 0, "wg rejected tunctl's key: \(fromWg.stderr)")
            let fromTunctl = try tunctl(["pubkey"], input: generated.stdout)
            #expect(fromTunctl.status == 0)
            #expect(fromTunctl.stdout == fromWg.stdout)
        }
    }

    @Test(needsWg) func wgGenkeyPipedToTunctlPubkeyEqualsWgPubkey() throws {
        for _ in 0..<8 {
            let generated = try wg(["genkey"])
            #expect(
                try tunctl(["pubkey"], input: generated.stdout).stdout
                    == wg(["pubkey"], input: generated.stdout).stdout)
        }
    }

    @Test(needsWg) func genpskIsAKeyWgAccepts() throws {
        let psk = try tunctl(["genpsk"])
        #expect(psk.status == 0)
        #expect(psk.stdout.count == 45)
        // Any 32 bytes in base64 are a valid wg key; wg rejects anything else.
        #expect(try wg(["pubkey"], input: psk.stdout).status == 0)
        #expect(try tunctl(["genpsk"]).stdout != psk.stdout)
    }

    @Test(arguments: [
        "", "\n", "not a key\n", "IMs54KUOz697TcwUj5ZnGZ1xZD9v+8emfEwbW6t=\n",
        String(repeating: "A", count: 10_000),
    ])
    func pubkeyRejectsBadInputWithoutEchoingIt(input: String) throws {
        let result = try tunctl(["pubkey"], input: input)
        #expect(result.status == 1)
        expectOneLineError(result, containing: "stdin is not a valid base64 private key of 32 bytes")
        if input.count > 4 {
            #expect(!result.stderr.contains(input.trimmingCharacters(in: .whitespacesAndNewlines)))
        }
    }

    // MARK: config errors through the CLI

    @Test func checkPrintsConfigErrorsAsOneLineWithoutSecrets() throws {
        let scratch = try Scratch()
        let key = try tunctl(["genkey"]).stdout
        let config = scratch.path + "/wg0.conf"
        try "[Interface]\nPrivateKey = \(key.prefix(40))\n".write(
            toFile: config, atomically: false, encoding: .utf8)
        #expect(chmod(config, 0o600) == 0)
        let bad = try tunctl(["check", config])
        expectOneLineError(
            bad,
            containing:
                "\(config):2: [Interface] PrivateKey: the value (not shown, it is secret) is not a valid "
                + "base64 key of 32 bytes (generate one with tunctl genkey)")
        #expect(!bad.stderr.contains(key.prefix(40)))

        try "[Interface]\nPrivateKeyFile = wg0.key\n".write(
            toFile: config, atomically: false, encoding: .utf8)
        try key.write(toFile: scratch.path + "/wg0.key", atomically: false, encoding: .utf8)
        #expect(chmod(scratch.path + "/wg0.key", 0o644) == 0)
        let open = try tunctl(["check", config])
        expectOneLineError(
            open,
            containing:
                "\(config):2: [Interface] PrivateKeyFile: \(scratch.path)/wg0.key: holds a private key but is "
                + "open to group or others (mode 0644; run chmod 600 \(scratch.path)/wg0.key)")
        #expect(!open.stderr.contains(key.dropLast()))

        #expect(chmod(scratch.path + "/wg0.key", 0o600) == 0)
        #expect(try tunctl(["check", config]).status == 0)
    }

    @Test func checkReportsBadValuesWithFileLineKeyAndText() throws {
        let scratch = try Scratch()
        let key = try tunctl(["genkey"]).stdout
        let peer = try tunctl(["pubkey"], input: try tunctl(["genkey"]).stdout).stdout
        let config = scratch.path + "/wg0.conf"
        try "[Interface]\nPrivateKey = \(key)[Peer]\nPublicKey = \(peer)AllowedIPs = 198.18.0.0/33\n"
            .write(toFile: config, atomically: false, encoding: .utf8)
        #expect(chmod(config, 0o600) == 0)
        let result = try tunctl(["check", config])
        #expect(
            result.stderr
                == "Error: \(config):5: [Peer] AllowedIPs: \"198.18.0.0/33\" is not an IP prefix "
                + "(use ADDRESS/LENGTH, e.g. 198.18.0.0/15)\n")
        #expect(result.status == 1)

        try "[Interface]\nPrivateKey = \(key)[Peer]\nPublicKey = \(peer)AllowedIPs = 198.18.0.0/15\n"
            .write(toFile: config, atomically: false, encoding: .utf8)
        let good = try tunctl(["check", config])
        #expect(good.status == 0, "stderr: \(good.stderr)")
        let ours = try tunctl(["pubkey"], input: key).stdout.dropLast()
        #expect(good.stdout == "wg0: ok, public key \(ours), 1 peer\n")
    }

    /// The in-process data path: every packet sealed on the workers and opened again arrives
    /// intact (the command fails otherwise), with one worker and with more workers than items
    /// in a share, at a small and at a jumbo size. Speed is the benchmark's business, not this.
    @Test(arguments: [("1", "1420", "128"), ("2", "1420", "128"), ("3", "9000", "5"), ("8", "60", "3")])
    func benchDataplaneDeliversEveryPacket(workers: String, size: String, batch: String) throws {
        let result = try tunctl([
            "bench-dataplane", "--workers", workers, "--size", size, "--batch", batch, "--seconds", "0.2",
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.hasPrefix("{\"workers\":\(workers),\"size\":\(size),\"batch\":\(batch),\"packets\":"))
        let packets = result.stdout.split(separator: ",").first { $0.hasPrefix("\"packets\":") }
        #expect((packets.flatMap { Int($0.dropFirst(10)) } ?? 0) > 0, "\(result.stdout)")
    }

    @Test func wgIsAvailableInCI() {
        if Tools.isCI { #expect(Tools.wg != nil, "CI=true but wg (wireguard-tools) is not installed") }
    }
}
