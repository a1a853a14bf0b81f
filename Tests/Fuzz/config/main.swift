// The wg-quick config parser and the UAPI `set` parser.
//
// Input: one selector byte, then the text. Even selector: a wg-quick config. A config that
// parses is written back (ConfigWriter) and must parse to the same model; one that does not
// must fail with a one-line error that repeats no key from the input. Odd selector: a UAPI
// `set=1` body applied to a device that already holds a peer; a refused body must leave the
// device exactly as it was, and an accepted one, read back with `get` and set on a fresh device,
// must read back the same.
import FuzzSupport
import TunnelCore
import TunnelCrypto

/// Everything a config says, locations aside, as text to compare.
func model(_ config: TunnelConfig) -> String {
    var out: [String] = []
    let interface = config.interface
    switch interface.privateKey {
    case .inline(let key): out.append("key \(key.publicKey.base64)")
    case .file(let reference): out.append("keyfile \(reference.path)")
    }
    out.append("addresses \(interface.addresses)")
    out.append("port \(String(describing: interface.listenPort)) mtu \(String(describing: interface.mtu))")
    out.append("dns \(interface.dns.servers) \(interface.dns.searchDomains)")
    out.append("table \(String(describing: interface.table)) mark \(String(describing: interface.fwMark))")
    out.append("save \(interface.saveConfig)")
    let hooks = interface.hooks
    for list in [hooks.preUp, hooks.postUp, hooks.preDown, hooks.postDown] {
        out.append("hooks \(list.map(\.command))")
    }
    for peer in config.peers {
        out.append("peer \(peer.publicKey.base64)")
        switch peer.presharedKey {
        case .inline(let key)?: out.append("psk \(key.secret.withUnsafeBytes { Array($0) })")
        case .file(let reference)?: out.append("pskfile \(reference.path)")
        case nil: out.append("no psk")
        }
        out.append("endpoint \(String(describing: peer.endpoint)) allowed \(peer.allowedIPs)")
        out.append("keepalive \(String(describing: peer.persistentKeepalive))")
    }
    return out.joined(separator: "\n")
}

func fuzzConfig(_ text: String) {
    let config: TunnelConfig
    do {
        config = try TunnelConfig.parse(text, fileName: "fuzz.conf")
    } catch {
        let message = error.description
        require(!message.contains("\n"), "a config error spans lines: \(message)")
        // An error about a secret's line never repeats its value: it names the line instead.
        // (A public key may be quoted: it is no secret.)
        var body = Substring(text)
        if body.hasPrefix("\u{FEFF}") { body = body.dropFirst() }
        let lines = body.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (index, line) in lines.enumerated() where message.hasPrefix("fuzz.conf:\(index + 1):") {
            let parts = line.split(separator: "=", maxSplits: 1)
            let name = parts.first.map { $0.trimmingCharacters(in: " \t").lowercased() }
            guard parts.count == 2, name == "privatekey" || name == "presharedkey" else { continue }
            let value = parts[1].trimmingCharacters(in: " \t")
            // Key-like values only (16+ base64 characters): shorter or other text may occur in
            // the message's own words.
            let keyLike =
                value.count >= 16
                && value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+/=".contains($0)) }
            require(!keyLike || !message.contains(value), "a config error repeats a secret: \(message)")
        }
        return
    }
    let written = config.text()
    do {
        let again = try TunnelConfig.parse(written, fileName: "fuzz.conf")
        require(model(again) == model(config), "written back it parses to another model:\n\(written)")
        require(again.text() == written, "written twice it reads differently")
    } catch {
        require(false, "written back it does not parse (\(error)):\n\(written)")
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var result = self
        while let first = result.first, set.contains(first) { result = result.dropFirst() }
        while let last = result.last, set.contains(last) { result = result.dropLast() }
        return result
    }
}

let now = Instant(monotonic: 5_000_000_000, unixNanoseconds: 1_700_000_000_000_000_000)
/// A key of 32 equal bytes.
func key(_ byte: UInt8) -> PrivateKey {
    PrivateKey(secret: SecretKey { $0.initializeMemory(as: UInt8.self, repeating: byte) })
}

let deviceKey = key(7)

/// A device holding one peer with an endpoint and allowed IPs, as a running daemon would.
func makeDevice() -> Device {
    let device = Device(privateKey: deviceKey)
    let peerKey = key(9)
    let peer = device.addPeer(peerKey.publicKey)!
    device.setEndpoint(Endpoint("192.0.2.1:51820"), for: peer)
    device.addAllowedIP(IPPrefix("198.18.0.0/15")!, for: peer)
    return device
}

/// The lines of a `get` reply that `set` can give back: the configuration, not the counters.
func settable(_ reply: String) -> [Substring] {
    let keys: Set<Substring> = [
        "private_key", "public_key", "preshared_key", "endpoint", "persistent_keepalive_interval", "allowed_ip",
    ]
    return reply.split(separator: "\n").filter { line in
        guard let equals = line.firstIndex(of: "=") else { return false }
        return keys.contains(line[..<equals])
    }
}

func fuzzUAPI(_ body: UnsafeRawBufferPointer) {
    let device = makeDevice()
    let before = UAPI.get(device: device, listenPort: 51820)
    var port: UInt16?
    var mark: UInt32?
    let status = UAPI.set(body, device: device, now: now, setListenPort: { port = $0 }, setFwMark: { mark = $0 })
    let after = UAPI.get(device: device, listenPort: 51820)
    let parsed = UAPI.parseSet(body)
    guard status == 0 else {
        require(after == before, "a refused set (\(status)) changed the device")
        require(port == nil && mark == nil, "a refused set changed the port or mark")
        if case .failure(let error) = parsed {
            require(error.errno == status, "parseSet and set disagree about the errno")
        } else {
            require(false, "parseSet accepts what set refuses")
        }
        return
    }
    guard case .success = parsed else { return require(false, "parseSet refuses what set accepts") }
    // Read back, set on a fresh device, read back again: the same configuration.
    var replay = ["replace_peers=true"]
    for line in settable(after) {
        replay.append(String(line))
        if line.hasPrefix("public_key=") { replay.append("replace_allowed_ips=true") }
    }
    let fresh = Device(privateKey: nil)
    let replayed = UAPI.set(replay.joined(separator: "\n") + "\n", device: fresh, now: now, setListenPort: { _ in })
    require(replayed == 0, "set refuses its own get output (\(replayed))")
    let again = UAPI.get(device: fresh, listenPort: 51820)
    require(settable(again) == settable(after), "get, set, get reads back another configuration")
}

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let selector = input.byte()
    let body = input.rest()
    if selector & 1 == 0 {
        fuzzConfig(String(decoding: body, as: UTF8.self))
    } else {
        fuzzUAPI(body)
    }
    return 0
}

runFuzzer { data, size in fuzzOne(data, size) }
