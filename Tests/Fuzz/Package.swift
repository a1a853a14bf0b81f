// swift-tools-version: 6.1
import PackageDescription

// libFuzzer targets for tunctl (issue 18), one executable per input surface. A package apart from
// the main one so that `-sanitize=fuzzer,address` never touches the normal build or `swift test`.
// Each main.swift hands its test function to libFuzzer's LLVMFuzzerRunDriver (CFuzzDriver): SwiftPM
// gives every executable its own entry point, so libFuzzer's `main` is not used. Build and run: `Scripts/test --fuzz`, or
//
//   swift build -c release --package-path Tests/Fuzz --scratch-path .build-fuzz \
//       -Xswiftc -sanitize=fuzzer,address
//   .build-fuzz/release/fuzz-receive -max_total_time=60 Tests/Fuzz/receive/corpus
let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
    ("receive", [.product(name: "TunnelCore", package: "tunctl"), .product(name: "TunnelCrypto", package: "tunctl")]),
    ("tun", [.product(name: "TunnelCore", package: "tunctl")]),
    ("config", [.product(name: "TunnelCore", package: "tunctl"), .product(name: "TunnelCrypto", package: "tunctl")]),
    ("allowedips", [.product(name: "TunnelCore", package: "tunctl")]),
    ("aead", [.product(name: "TunnelCrypto", package: "tunctl")]),
]

let package = Package(
    name: "tunctl-fuzz",
    products: fuzzTargets.map { .executable(name: "fuzz-\($0.name)", targets: ["fuzz-\($0.name)"]) },
    dependencies: [.package(name: "tunctl", path: "../..")],
    targets: [
        .target(name: "CFuzzDriver", path: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver"], path: "FuzzSupport"),
    ]
        + fuzzTargets.map {
            .executableTarget(
                name: "fuzz-\($0.name)", dependencies: ["FuzzSupport"] + $0.dependencies, path: $0.name,
                exclude: ["corpus"])
        },
    swiftLanguageModes: [.v6]
)
