// swift-tools-version: 6.1
import PackageDescription

// Dependencies point inward: tunctl → TunnelIO → TunnelCore → TunnelCrypto → C modules.
let package = Package(
    name: "tunctl",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tunctl", targets: ["tunctl"]),
        // For the libFuzzer targets in Tests/Fuzz, a package of their own that depends on this one
        // by path (so the sanitizer flags never reach the normal build).
        .library(name: "TunnelCore", targets: ["TunnelCore"]),
        .library(name: "TunnelIO", targets: ["TunnelIO"]),
        .library(name: "TunnelCrypto", targets: ["TunnelCrypto"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // The Prometheus text exposition (`tunctl show --format prometheus`, the metrics endpoint).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The loopback HTTP endpoint for metrics: no SwiftNIO, so it adds seconds, not minutes, to
        // a clean build (README, "Operating").
        .package(url: "https://github.com/swhitty/FlyingFox", from: "0.27.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]),
        .systemLibrary(
            name: "CBlake2", path: "Sources/CBlake2", pkgConfig: "libb2",
            providers: [.apt(["libb2-dev"])]),
        .target(name: "CLinuxShim", path: "Sources/CLinuxShim"),
        .target(name: "TunnelCrypto", dependencies: ["CSodium", "CBlake2"]),
        .target(name: "TunnelCore", dependencies: ["TunnelCrypto"]),
        .target(
            name: "TunnelIO",
            dependencies: [
                "TunnelCore", "CLinuxShim",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        // Test support only: replaces malloc with a counting wrapper so tests can prove a hot path
        // allocates nothing. Linked into the test bundle through TunnelTestSupport, nowhere else.
        .target(name: "CAllocationCounter", path: "Sources/CAllocationCounter"),
        .target(name: "TunnelTestSupport", dependencies: ["TunnelCore", "CAllocationCounter"]),
        .executableTarget(
            name: "tunctl",
            dependencies: [
                "TunnelIO", "TunnelCore", "TunnelCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "FlyingFox", package: "FlyingFox"),
            ],
            plugins: ["BuildInfo"]),
        // Writes BuildInfo.swift (the git commit `tunctl --version` prints) before every build;
        // "unknown" without git or a .git directory.
        .plugin(name: "BuildInfo", capability: .buildTool()),
        // Test support: a UDP relay that drops, reorders and duplicates datagrams between two
        // namespaces, standing in for netem (not available on these machines).
        .executableTarget(name: "udprelay", dependencies: ["TunnelCore"], path: "Sources/udprelay"),
        .testTarget(name: "TunnelCryptoTests", dependencies: ["TunnelCrypto"]),
        .testTarget(name: "TunnelCoreTests", dependencies: ["TunnelCore", "TunnelTestSupport"]),
        .testTarget(name: "TunnelIOTests", dependencies: ["TunnelIO", "TunnelTestSupport"]),
        .testTarget(name: "tunctlTests", dependencies: ["tunctl", "TunnelCore"]),
    ],
    swiftLanguageModes: [.v6]
)
