import Dispatch
import HTTPServing
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The live set of peers: the `--peers` names resolved again every `interval`
/// on a background queue, so instances behind a DNS name (a Kubernetes headless
/// service) come and go. This instance itself is never among them.
///
/// Thread safety: `peers` may be read from any thread; resolution runs on its own queue.
public final class PeerDiscovery: Sendable {
    public let seeds: [HostPort]
    public let interval: Duration
    private let isSelf: @Sendable (PeerAddress) -> Bool
    private let resolve: @Sendable (HostPort) -> [PeerAddress]?
    private let logger: Logger
    /// The resolved peers, by seed, and whether discovery stopped. Lock order: a leaf; names are
    /// resolved outside it.
    private let state = Mutex<State>(State())
    private let queue = DispatchQueue(label: "cachefs.peer-discovery")

    private struct State {
        var bySeed: [HostPort: [PeerAddress]] = [:]
        /// Resolved addresses that are this instance (dropped from `bySeed`), by seed.
        var selfBySeed: [HostPort: [PeerAddress]] = [:]
        /// Addresses that answered as this instance (508).
        var knownSelf: Set<PeerAddress> = []
        var stopped = false
    }

    /// - Parameters:
    ///   - isSelf: whether an address is this instance's own listening address.
    ///   - resolve: name resolution, `getaddrinfo` by default; nil when it failed (the last answer is kept).
    public init(
        seeds: [HostPort], interval: Duration = .seconds(10), logger: Logger,
        isSelf: @escaping @Sendable (PeerAddress) -> Bool,
        resolve: @escaping @Sendable (HostPort) -> [PeerAddress]? = PeerDiscovery.addresses(of:)
    ) {
        self.seeds = seeds
        self.interval = interval
        self.logger = logger
        self.isSelf = isSelf
        self.resolve = resolve
    }

    /// Every live peer but this instance, sorted.
    public var peers: [PeerAddress] {
        state.withLock { state in
            Set(state.bySeed.values.joined()).subtracting(state.knownSelf).sorted()
        }
    }

    /// The address the other instances know this one by, if the peer list names it (as a DNS name
    /// listing every instance does): its place among them when they rank instances for a stripe.
    public var ownAddress: PeerAddress? {
        state.withLock { state in
            state.selfBySeed.values.joined().min() ?? state.knownSelf.min()
        }
    }

    /// Resolves every seed now, on the caller's thread.
    public func refresh() {
        for seed in seeds {
            guard let found = resolve(seed) else {
                logger.warning("cannot resolve peer name; keeping its last addresses", metadata: ["peers": "\(seed)"])
                continue
            }
            let others = found.filter { !isSelf($0) }
            let changed = state.withLock { state in
                state.selfBySeed[seed] = found.filter(isSelf)
                defer { state.bySeed[seed] = others }
                return state.bySeed[seed].map(Set.init) != Set(others)
            }
            if changed { logger.info("peers", metadata: ["name": "\(seed)", "addresses": "\(others.map(\.description))"]) }
        }
    }

    /// Resolves now, then every `interval` until `stop`.
    public func start() {
        queue.async { [self] in
            guard !state.withLock({ $0.stopped }) else { return }
            refresh()
            queue.asyncAfter(deadline: .now() + interval / .seconds(1)) { [self] in
                start()
            }
        }
    }

    public func stop() { state.withLock { $0.stopped = true } }

    /// An address that turned out to be this instance (it refused our request as its own): never asked again.
    public func excludeSelf(_ peer: PeerAddress) {
        let isNew = state.withLock { $0.knownSelf.insert(peer).inserted }
        if isNew { logger.info("peer address is this instance; no longer asked", metadata: ["peer": "\(peer)"]) }
    }

    /// Every address `getaddrinfo` gives for the name (TCP), numeric; nil if resolution failed.
    @Sendable public static func addresses(of seed: HostPort) -> [PeerAddress]? {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(seed.host, String(seed.port), &hints, &list) == 0 else { return nil }
        defer { freeaddrinfo(list) }
        var found: [PeerAddress] = []
        var entry = list
        while let current = entry {
            if let host = numericHost(current.pointee.ai_addr, length: current.pointee.ai_addrlen) {
                found.append(PeerAddress(host: host, port: seed.port))
            }
            entry = current.pointee.ai_next
        }
        return Array(Set(found)).sorted()
    }

    static func numericHost(_ address: UnsafePointer<sockaddr>?, length: socklen_t) -> String? {
        guard let address else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        guard getnameinfo(address, length, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 else { return nil }
        let host = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return host.split(separator: "%").first.map(String.init) // drop an IPv6 zone
    }

    /// The numeric addresses of this machine's interfaces (for "is this peer me?").
    public static func localAddresses() -> Set<String> {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var found: Set<String> = []
        var entry = list
        while let current = entry {
            if let address = current.pointee.ifa_addr {
                let family = Int32(address.pointee.sa_family)
                let length = family == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
                if family == AF_INET || family == AF_INET6, let host = numericHost(address, length: socklen_t(length)) {
                    found.insert(host)
                }
            }
            entry = current.pointee.ifa_next
        }
        return found
    }
}
