import TunnelCrypto

/// Bytes from a hex string written in a test (whitespace ignored). A malformed literal is a bug
/// in the test, so it traps rather than returning nil.
func fromHex(_ text: String) -> [UInt8] {
    let digits = Array(text.unicodeScalars.filter { !$0.properties.isWhitespace })
    precondition(digits.count % 2 == 0, "odd-length hex literal")
    return stride(from: 0, to: digits.count, by: 2).map { index in
        guard let value = UInt8(String(digits[index]) + String(digits[index + 1]), radix: 16) else {
            preconditionFailure("bad hex literal")
        }
        return value
    }
}

func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
}

func ascii(_ text: String) -> [UInt8] { Array(text.utf8) }

extension SecretKey {
    /// A key from a hex literal in a test.
    static func test(hex text: String) -> SecretKey {
        let value = fromHex(text)
        return value.withUnsafeBytes { SecretKey(copying: $0) }
    }

    var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
}

extension PublicKey {
    /// A public key (u-coordinate) from a hex literal in a test.
    static func test(hex text: String) -> PublicKey {
        guard let value = PublicKey(hex: text) else { preconditionFailure("bad key literal") }
        return value
    }
}
