// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "cachefs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "cachefs", targets: ["cachefs"]),
        .executable(name: "cachefs-testsource", targets: ["cachefs-testsource"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
    ],
    targets: [
        // libfuse3 through pkg-config, with static inline wrappers for what Swift cannot import.
        .systemLibrary(
            name: "CFuse",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),
        // Linux headers the Glibc module leaves out (extended attributes).
        .systemLibrary(name: "CLinux"),
        // Threads with an owner that joins them, and the one way to wait for another thread.
        .target(name: "Threading", dependencies: ["CLinux"]),
        // The catalogue of the daemon's figures, and how each part reports its own.
        .target(name: "Reporting"),
        // The in-memory block cache: LRU, capacity bound, miss coalescing. Knows nothing of FUSE or files.
        .target(
            name: "BlockCache",
            dependencies: [
                "CLinux", "CRC32C", "Threading", "Reporting",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Sequential-read detection and a bounded pool that loads blocks ahead of readers.
        .target(
            name: "Prefetch",
            dependencies: ["Threading", "Reporting", .product(name: "DequeModule", package: "swift-collections")]
        ),
        // Access to the source directory through file descriptors, errors as Errno.
        .target(
            name: "SourceTree",
            dependencies: [
                "CLinux", "Threading", "Reporting",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The read-only mirror: inode table, open files, reads through the cache. Testable without FUSE.
        .target(
            name: "MirrorFS",
            dependencies: [
                "BlockCache", "Prefetch", "SourceTree", "PeerTransport", "Reporting",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Translates libfuse low-level callbacks into MirrorFS calls and errors into errno.
        .target(
            name: "FuseBridge",
            dependencies: [
                "CFuse", "CLinux", "MirrorFS", "BlockCache", "Reporting",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // CRC32C (Castagnoli) with the SSE4.2 instruction where the CPU has it: the peer transfer's integrity check.
        .target(name: "CRC32C"),
        // The daemon's one HTTP/1.1 stack, on SwiftNIO: a listener service, a whole-message responder and
        // a one-shot client (control socket, metrics, peers), and the one HOST:PORT parser.
        .target(
            name: "HTTPServing",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Block sharing between cachefs instances over HTTP: names, holders and owners (the fleet), the blocking
        // client that receives blocks straight into their memory, the server, rendezvous, discovery.
        // Knows nothing of FUSE or MirrorFS; only BlockCache's `Block`, the bytes it serves.
        .target(
            name: "PeerTransport",
            dependencies: [
                "BlockCache", "CRC32C", "CLinux", "HTTPServing", "Threading",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // What one daemon hands the next so the mount and the cache outlive it (a hand-over, a restart
        // after a crash): the state journal, the node snapshot, descriptors passed over Unix sockets.
        .target(
            name: "Continuity",
            dependencies: ["BlockCache", "MirrorFS", "CRC32C", "CLinux", .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The daemon's control socket (stats) and its client.
        .target(
            name: "ControlPlane",
            dependencies: [
                "HTTPServing", "Reporting",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Read latency by tier and Prometheus exposition of the daemon's counters (swift-metrics + swift-prometheus).
        .target(
            name: "Telemetry",
            dependencies: [
                "BlockCache", "FuseBridge", "ControlPlane", "Reporting",
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "cachefs",
            dependencies: [
                "BlockCache", "Prefetch", "SourceTree", "MirrorFS", "FuseBridge", "ControlPlane", "Telemetry", "PeerTransport",
                "HTTPServing",
                "Continuity", "Threading", "Reporting",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // Test tooling: a slow, fault-injecting FUSE source for benchmarks and fault tests.
        .executableTarget(
            name: "cachefs-testsource",
            dependencies: ["CFuse", "Threading", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // What the test targets share: a seeded random generator.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(
            name: "BlockCacheTests",
            dependencies: [
                "BlockCache", "Reporting", "TestSupport",
                .product(name: "SystemPackage", package: "swift-system"), .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "PrefetchTests", dependencies: ["Prefetch"]),
        .testTarget(name: "ThreadingTests", dependencies: ["Threading"]),
        .testTarget(
            name: "ContinuityTests",
            dependencies: ["Continuity", "MirrorFS", "BlockCache", "SourceTree", .product(name: "Logging", package: "swift-log")]),
        .testTarget(
            name: "MirrorFSTests",
            dependencies: [
                "MirrorFS", "SourceTree", "BlockCache", "PeerTransport", "CRC32C", "CLinux", "HTTPServing", "TestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "PeerTransportTests",
            dependencies: [
                "PeerTransport", "BlockCache", "CRC32C", "HTTPServing", "TestSupport",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "IntegrationTests", dependencies: ["ControlPlane", "Reporting", "TestSupport"]),
        // Property-based fuzzing of what the command line accepts.
        .testTarget(
            name: "CommandLineTests",
            dependencies: [
                "cachefs", "TestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
