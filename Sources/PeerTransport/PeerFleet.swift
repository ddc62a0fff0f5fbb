import Logging
import Synchronization
import Threading

/// What a block load asks of the other instances before its own source: implemented by
/// `PeerFleet`; tests put slow, failing or scripted fleets here.
///
/// Called on the loading thread (a FUSE worker, a prefetch lane, a warm-up), which blocks
/// until it returns; an implementation bounds that wait.
public protocol BlockFleet: Sendable {
    /// How many blocks from the first of `range` one exchange would serve (one holder's run, or one
    /// owner's stripes), at least 1. A caller claims only these before `load`, so that no block it has
    /// claimed waits on a peer that waits on the caller: an owner asked for blocks this instance has
    /// claimed for a run that is waiting on another owner could otherwise wait on that wait.
    func segment(of range: PeerBlockRange) -> Int

    /// Fills the first blocks of `range` (`targets[i]` is block `range.first + i`) from a peer,
    /// or tells the caller to read them from its own source.
    func load(_ range: PeerBlockRange, into targets: ArraySlice<ReceiveTarget>) -> FleetAnswer
}

public enum FleetAnswer: Equatable, Sendable {
    /// The first `blocks` of the range are in their targets, verified; `checksums` are their CRC-32Cs.
    case received(blocks: Int, checksums: [UInt32])
    /// The caller reads the first `blocks` of the range from its own source: this instance owns
    /// them, or their owner failed, declined or is in backoff.
    case readSource(blocks: Int)
}

/// The fleet's side of a load: find any peer holding a block, else ask the block's owner.
///
/// 1. **Holders.** The first time a file version is loaded, and again once its answers are
///    older than `holdingsFreshness`, every live peer is asked which blocks of it it holds
///    (a bitmap). A block some peer holds is taken from one of them, chosen by rendezvous rank
///    among the holders of its stripe, so a file streams from several holders at once. A holder
///    that answers 404 for a block it listed is not asked for that file again until the next query.
/// 2. **Owners.** A block no peer holds belongs to the first instance rendezvous hashing ranks
///    for its stripe (this one included, where the peer list names it). If this instance is the
///    owner, it reads its source; otherwise it asks the owner to load the blocks from the owner's
///    source (each owner reads its stripes once, for every asker) and waits for its answer. An
///    owner in backoff gives its stripes to the next instance in rank. An owner that fails,
///    declines or misses `ownerTimeout` sends this instance to its own source.
///
/// A load on behalf of a peer never comes here (the server loads from its own source only), so
/// no request can lead to another peer request, and no chain of waits can form.
public final class PeerFleet: BlockFleet {
    public let client: PeerClient
    public let discovery: PeerDiscovery
    public let counters = FleetCounters()
    /// This instance's name in the ranking when the peer list does not name it (its non-wildcard --listen).
    private let fallbackOwnAddress: PeerAddress?
    public let holdingsFreshness: Duration
    /// Stripes an owner loads ahead of the stripes its askers reach (see `ownedStripesAhead`).
    public let ownerReadAhead: Int
    private let logger: Logger

    private struct FileHoldings {
        var byPeer: [PeerAddress: BlockBitmap] = [:]
        var queriedAt: ContinuousClock.Instant?
        /// Set while a query runs, and set (`Condition.set`) when its answers are in; a thread with no
        /// answers yet waits for it. Lock order: a leaf, waited on outside `holdings`.
        var querying: Condition<Bool>?
        var lastUse: ContinuousClock.Instant
    }

    /// Guards the holdings of the files being read. Lock order: a leaf; no exchange runs under it.
    private let holdings = Mutex<[PeerFile: FileHoldings]>([:])
    private static let holdingsKeptFiles = 256
    /// Blocks this instance is waiting for from their owners, counted per file and index: a peer
    /// that asks this instance to load one of them as *its* owner is declined (409) rather than
    /// made to wait on a wait, which only instances with different views of the fleet can cause.
    /// Lock order: a leaf.
    private let awaited = Mutex<[PeerFile: [Int64: Int]]>([:])
    /// Per file, the stripes up to which this instance has loaded ahead as owner. Lock order: a leaf.
    private let readAheadMarks = Mutex<[PeerFile: Int64]>([:])
    /// The balanced owners of recently read files' stripes, by the set of instances they were worked out for.
    /// Lock order: a leaf.
    private let ownersByFile = Mutex<[OwnersKey: [PeerAddress]]>([:])

    public init(
        client: PeerClient, discovery: PeerDiscovery, ownAddress: PeerAddress?, holdingsFreshness: Duration = .seconds(1),
        ownerReadAhead: Int = 16, logger: Logger
    ) {
        self.client = client
        self.discovery = discovery
        fallbackOwnAddress = ownAddress
        self.holdingsFreshness = holdingsFreshness
        self.ownerReadAhead = ownerReadAhead
        self.logger = logger
    }

    /// The name other instances rank this one by, if known.
    public var ownAddress: PeerAddress? { discovery.ownAddress ?? fallbackOwnAddress }

    public func segment(of range: PeerBlockRange) -> Int {
        let peers = discovery.peers
        guard !peers.isEmpty, range.count > 1 else { return range.count }
        let held = currentHoldings(of: range.file, peers: peers)
        let runs = held.filter { client.health.isAvailable($0.key) }.map { $0.value.run(from: range.first, limit: range.count) }
        if let longest = runs.max(), longest > 0 { return longest }
        return ownerSegment(of: range, ring: ring(peers)).range.count
    }

    public func load(_ range: PeerBlockRange, into targets: ArraySlice<ReceiveTarget>) -> FleetAnswer {
        precondition(range.count > 0 && targets.count >= range.count)
        let peers = discovery.peers
        guard !peers.isEmpty else { return .readSource(blocks: range.count) }
        if let answer = loadFromHolder(range, peers: peers, into: targets) { return answer }
        return loadFromOwner(range, peers: peers, into: targets)
    }

    // MARK: Holders

    private func loadFromHolder(_ range: PeerBlockRange, peers: [PeerAddress], into targets: ArraySlice<ReceiveTarget>) -> FleetAnswer? {
        let held = currentHoldings(of: range.file, peers: peers)
        let stripe = Rendezvous.stripe(of: range.first, blockSize: range.file.blockSize)
        let holders = held.filter { $0.value[range.first] && client.health.isAvailable($0.key) }.map(\.key)
        for holder in Rendezvous.rank(holders, file: range.file, stripe: stripe).prefix(2) {
            guard let bitmap = held[holder] else { continue }
            let run = range.prefix(bitmap.run(from: range.first, limit: range.count))
            switch client.fetch(run, ownerLoad: false, from: holder, into: targets) {
            case .blocks(let count, let checksums):
                client.health.recordSuccess(holder)
                counters.blocksFromHolders.add(UInt64(count), ordering: .relaxed)
                return .received(blocks: count, checksums: checksums)
            case .notFound, .declined:
                // Evicted since it answered, or never true: not asked for this file until the next query.
                counters.notFound.add(1, ordering: .relaxed)
                forgetHoldings(of: range.file, at: holder)
            case .isSelf:
                discovery.excludeSelf(holder)
                forgetHoldings(of: range.file, at: holder)
            case .failed(let reason):
                failed(holder, reason: reason, range: run)
                forgetHoldings(of: range.file, at: holder)
            case .timedOut:
                failed(holder, reason: "no answer in time", range: run)
                forgetHoldings(of: range.file, at: holder)
            }
        }
        return nil
    }

    /// The holdings of `file` known now, asking every live peer first if they are missing or old.
    /// One thread asks at a time; others use the previous answers, or wait for the first ones.
    func currentHoldings(of file: PeerFile, peers: [PeerAddress]) -> [PeerAddress: BlockBitmap] {
        let now = ContinuousClock.now
        enum Step { case use([PeerAddress: BlockBitmap]), query(Condition<Bool>), wait(Condition<Bool>) }
        let step: Step = holdings.withLock { table in
            var entry = table[file] ?? FileHoldings(lastUse: now)
            entry.lastUse = now
            defer { table[file] = entry }
            if let queriedAt = entry.queriedAt, now - queriedAt < holdingsFreshness { return .use(entry.byPeer) }
            if let running = entry.querying { return entry.queriedAt == nil ? .wait(running) : .use(entry.byPeer) }
            /// Set once this query's answers are in. Lock order: a leaf.
            let answered = Condition(false)
            entry.querying = answered
            if table.count >= Self.holdingsKeptFiles, let oldest = table.min(by: { $0.value.lastUse < $1.value.lastUse })?.key {
                table[oldest] = nil
            }
            return .query(answered)
        }
        switch step {
        case .use(let known):
            return known
        case .wait(let running):
            // Until the first answers are in: a peer that does not answer must be in backoff before
            // anyone asks it to load blocks as their owner. The query is bounded by its exchanges' deadlines.
            let bound = (client.configuration.connectTimeout + client.configuration.blockTimeout) * peers.count + .seconds(1)
            _ = running.waitUntilSet(until: .now + bound)
            return holdings.withLock { $0[file]?.byPeer ?? [:] }
        case .query(let answered):
            var found: [PeerAddress: BlockBitmap] = [:]
            for peer in peers where client.health.isAvailable(peer) {
                switch client.holdings(of: file, from: peer) {
                case .holds(let bitmap):
                    client.health.recordSuccess(peer)
                    if !bitmap.isEmpty {
                        found[peer] = bitmap
                        counters.holdersFound.add(1, ordering: .relaxed)
                    }
                case .isSelf:
                    discovery.excludeSelf(peer)
                case .failed(let reason):
                    failed(peer, reason: reason, range: file.blocks(0, count: 0))
                }
            }
            holdings.withLock { table in
                table[file, default: FileHoldings(lastUse: now)].byPeer = found
                table[file]?.queriedAt = .now
                table[file]?.querying = nil
            }
            answered.set()
            return found
        }
    }

    private func forgetHoldings(of file: PeerFile, at peer: PeerAddress) {
        holdings.withLock { _ = $0[file]?.byPeer.removeValue(forKey: peer) }
    }

    // MARK: Owners

    /// The instances to rank for ownership: the live peers and, if known, this one.
    private func ring(_ peers: [PeerAddress]) -> (instances: [PeerAddress], own: PeerAddress?) {
        guard let own = ownAddress, !peers.contains(own) else { return (peers, nil) }
        return (peers + [own], own)
    }

    /// The owner of a stripe: its balanced owner (`Rendezvous.owners`) if that is this instance or not in
    /// backoff, else the first in rank that is; nil for this instance.
    private func owner(of file: PeerFile, stripe: Int64, ring: (instances: [PeerAddress], own: PeerAddress?)) -> PeerAddress? {
        let assigned = owners(of: file, among: ring.instances)
        if Int(stripe) < assigned.count, case let owner = assigned[Int(stripe)], owner == ring.own || client.health.isAvailable(owner) {
            return owner == ring.own ? nil : owner
        }
        for instance in Rendezvous.rank(ring.instances, file: file, stripe: stripe) {
            if instance == ring.own { return nil }
            if client.health.isAvailable(instance) { return instance }
        }
        return nil
    }

    /// The balanced owners of a file's stripes among these instances, worked out once per file and set of instances.
    private func owners(of file: PeerFile, among instances: [PeerAddress]) -> [PeerAddress] {
        let key = OwnersKey(file: file, instances: instances.sorted())
        if let known = ownersByFile.withLock({ $0[key] }) { return known }
        let computed = Rendezvous.owners(of: file, among: key.instances)
        ownersByFile.withLock { table in
            if table.count >= Self.holdingsKeptFiles { table.removeAll() }
            table[key] = computed
        }
        return computed
    }

    private struct OwnersKey: Hashable {
        var file: PeerFile
        var instances: [PeerAddress]
    }

    /// The blocks from the first of `range` that one owner serves (they end where a stripe with
    /// another owner starts), and that owner; nil for this instance.
    private func ownerSegment(of range: PeerBlockRange, ring: (instances: [PeerAddress], own: PeerAddress?)) -> (
        range: PeerBlockRange, owner: PeerAddress?
    ) {
        let stripeBlocks = Rendezvous.stripeBlocks(blockSize: range.file.blockSize)
        var stripe = range.first / stripeBlocks
        let owner = owner(of: range.file, stripe: stripe, ring: ring)
        var end = min(range.indices.upperBound, (stripe + 1) * stripeBlocks)
        while end < range.indices.upperBound {
            stripe += 1
            guard self.owner(of: range.file, stripe: stripe, ring: ring) == owner else { break }
            end = min(range.indices.upperBound, (stripe + 1) * stripeBlocks)
        }
        return (range.prefix(Int(end - range.first)), owner)
    }

    private func loadFromOwner(_ range: PeerBlockRange, peers: [PeerAddress], into targets: ArraySlice<ReceiveTarget>) -> FleetAnswer {
        let (segment, owner) = ownerSegment(of: range, ring: ring(peers))
        guard let owner else { return .readSource(blocks: segment.count) }

        markAwaited(segment, +1)
        defer { markAwaited(segment, -1) }
        counters.ownerRequests.add(1, ordering: .relaxed)
        switch client.fetch(segment, ownerLoad: true, from: owner, into: targets) {
        case .blocks(let count, let checksums):
            client.health.recordSuccess(owner)
            counters.blocksFromOwners.add(UInt64(count), ordering: .relaxed)
            return .received(blocks: count, checksums: checksums)
        case .notFound, .declined:
            client.health.recordSuccess(owner) // it answered: another version there, its source failed, or busy
        case .isSelf:
            discovery.excludeSelf(owner)
        case .failed(let reason):
            failed(owner, reason: reason, range: segment)
        case .timedOut:
            counters.ownerDeadlinesMissed.add(1, ordering: .relaxed)
            failed(owner, reason: "no answer within \(client.configuration.ownerTimeout)", range: segment)
        }
        counters.fallbacks.add(UInt64(segment.count), ordering: .relaxed)
        return .readSource(blocks: segment.count)
    }

    private func markAwaited(_ range: PeerBlockRange, _ change: Int) {
        awaited.withLock { awaited in
            for index in range.indices {
                let count = awaited[range.file, default: [:]][index, default: 0] + change
                awaited[range.file, default: [:]][index] = count > 0 ? count : nil
            }
            if awaited[range.file]?.isEmpty == true { awaited[range.file] = nil }
        }
    }

    /// Whether this instance waits for any block of `range` from its owner (see `awaited`).
    public func isAwaitingOwner(_ range: PeerBlockRange) -> Bool {
        awaited.withLock { awaited in
            guard let indexes = awaited[range.file] else { return false }
            return range.indices.contains { indexes[$0] != nil }
        }
    }

    /// After serving `range` to a peer: the stripes this instance owns within `ownerReadAhead` stripes
    /// past it that it has not loaded ahead yet, for it to load from its source before its askers reach
    /// them. Only a file this instance has been asked for as owner (`asOwner`, now or before) is read
    /// ahead: askers find blocks loaded ahead in its holdings and come back as to a holder, while blocks
    /// some other peer already holds (a scale-out) never lead to an owner request at all.
    public func ownedStripesAhead(of range: PeerBlockRange, asOwner: Bool) -> [PeerBlockRange] {
        let ring = ring(discovery.peers)
        guard ring.own != nil, ownerReadAhead > 0 else { return [] }
        let stripeBlocks = Rendezvous.stripeBlocks(blockSize: range.file.blockSize)
        let lastStripe = (range.indices.upperBound - 1) / stripeBlocks
        let horizon = min(lastStripe + Int64(ownerReadAhead), (range.file.blockCount - 1) / stripeBlocks)
        let from: Int64? = readAheadMarks.withLock { marks in
            guard asOwner || marks[range.file] != nil else { return nil }
            let from = max(lastStripe + 1, (marks[range.file] ?? -1) + 1)
            if horizon >= from {
                if marks.count >= Self.holdingsKeptFiles, marks[range.file] == nil { marks.removeAll() }
                marks[range.file] = horizon
            }
            return from
        }
        guard let from, horizon >= from else { return [] }
        return (from...horizon).compactMap { stripe in
            owner(of: range.file, stripe: stripe, ring: ring) == nil
                ? range.file.blocks(stripe * stripeBlocks, count: Int(stripeBlocks)) : nil
        }
    }

    private func failed(_ peer: PeerAddress, reason: String, range: PeerBlockRange) {
        client.health.recordFailure(peer)
        counters.failures.add(1, ordering: .relaxed)
        logger.notice("peer failed; skipping it for a while", metadata: ["peer": "\(peer)", "reason": "\(reason)", "blocks": "\(range)"])
    }
}

/// What the fleet did for this instance's loads; read by `cachefs stats`.
public final class FleetCounters: Sendable {
    /// Blocks received from peers that listed them in their holdings.
    public let blocksFromHolders = Atomic<UInt64>(0)
    /// Blocks received from their owners (loaded there for this instance, or already in memory there).
    public let blocksFromOwners = Atomic<UInt64>(0)
    /// Holdings answers that listed at least one block.
    public let holdersFound = Atomic<UInt64>(0)
    /// Requests asking an owner to load blocks, each a wait on the owner's load.
    public let ownerRequests = Atomic<UInt64>(0)
    /// Owner requests not answered within the owner timeout.
    public let ownerDeadlinesMissed = Atomic<UInt64>(0)
    /// Blocks read from this instance's source because their owner failed, declined or was too slow.
    public let fallbacks = Atomic<UInt64>(0)
    /// Requests a holder could not answer from memory.
    public let notFound = Atomic<UInt64>(0)
    /// Failed exchanges (refused, timed out, bad length or checksum, refused token).
    public let failures = Atomic<UInt64>(0)

    public init() {}
}
