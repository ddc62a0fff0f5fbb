import Synchronization
import Threading

/// Kept-alive connections to peers, at most `maximumPerPeer` open to one peer at once.
///
/// A fetching thread checks a connection out for one exchange and checks it back in if the
/// exchange ended cleanly; a connection the peer closed while it waited is dropped at the next
/// checkout, and one idle longer than `maximumIdle` (the peer server closes them after 60 s)
/// at any checkout or checkin.
final class PeerConnectionPool: Sendable {
    fileprivate struct State {
        var idle: [PeerAddress: [PeerSocket]] = [:]
        var closed = false
    }

    /// Guards the idle connections. Lock order: a leaf (nothing else is taken under it, and no socket
    /// call or wait runs under it).
    private let state = Mutex(State())
    /// Connections open to each peer, idle or checked out: a checkout that would open one more than
    /// `maximumPerPeer` waits here until one closes. Lock order: a leaf, never taken under `state`.
    private let openCounts = Condition<[PeerAddress: Int]>([:])
    let maximumIdlePerPeer: Int
    let maximumPerPeer: Int
    let connectTimeout: Duration
    let maximumIdle: Duration

    init(maximumIdlePerPeer: Int, maximumPerPeer: Int, connectTimeout: Duration, maximumIdle: Duration = .seconds(50)) {
        self.maximumIdlePerPeer = maximumIdlePerPeer
        self.maximumPerPeer = max(1, maximumPerPeer)
        self.connectTimeout = connectTimeout
        self.maximumIdle = maximumIdle
    }

    /// An idle connection to `peer` that is still open, else a new one (bounded by the connect timeout);
    /// waits until `deadline` while `maximumPerPeer` are open.
    func checkout(_ peer: PeerAddress, deadline: ContinuousClock.Instant) throws(PeerExchangeError) -> (socket: PeerSocket, reused: Bool) {
        var stale: [PeerSocket] = []
        defer { release(stale) }
        let (kept, closed): (PeerSocket?, Bool) = state.withLock { state in
            stale = state.dropIdle(olderThan: maximumIdle)
            while let socket = state.idle[peer]?.popLast() {
                if !socket.isClosedByPeer { return (socket, state.closed) }
                stale.append(socket)
            }
            return (nil, state.closed)
        }
        guard !closed else { throw .failed("shutting down") }
        if let kept { return (kept, true) }
        release(stale) // before waiting: a stale connection's slot may be the one this checkout waits for
        stale = []
        let counted = openCounts.wait(until: deadline) { counts -> Bool? in
            guard counts[peer, default: 0] < maximumPerPeer else { return nil }
            counts[peer, default: 0] += 1
            return true
        }
        guard counted != nil else { throw .timedOut("free connection to \(peer)") }
        do {
            return (try PeerSocket.connect(to: peer, timeout: min(connectTimeout, deadline - .now)), false)
        } catch {
            openCounts.update { $0[peer, default: 1] -= 1 }
            throw error
        }
    }

    /// Keeps a connection whose exchange ended cleanly, for the next one with that peer.
    func checkin(_ socket: PeerSocket, to peer: PeerAddress) {
        socket.idleSince = .now
        var dropped: [PeerSocket] = []
        defer { release(dropped) }
        state.withLock { state in
            dropped = state.dropIdle(olderThan: maximumIdle)
            if !state.closed, state.idle[peer, default: []].count < maximumIdlePerPeer {
                state.idle[peer, default: []].append(socket)
            } else {
                dropped.append(socket)
            }
        }
    }

    /// Closes a checked-out connection that will not be used again.
    func discard(_ socket: PeerSocket) { release([socket]) }

    /// Uncounts connections taken out of use, waking checkouts that wait for one; their sockets close
    /// as the last reference goes.
    private func release(_ sockets: [PeerSocket]) {
        guard !sockets.isEmpty else { return }
        openCounts.update { counts in
            for socket in sockets { counts[socket.peer, default: 1] -= 1 }
        }
    }

    /// Idle connections kept for `peer` (for tests).
    func idleCount(for peer: PeerAddress) -> Int { state.withLock { $0.idle[peer]?.count ?? 0 } }

    /// Closes every idle connection; later checkouts fail.
    func shutdown() {
        let idle = state.withLock { state in
            state.closed = true
            defer { state.idle = [:] }
            return Array(state.idle.values.joined())
        }
        release(idle)
    }
}

extension PeerConnectionPool.State {
    /// Takes idle connections out of the pool that have waited longer than `limit`; the caller closes them.
    mutating func dropIdle(olderThan limit: Duration) -> [PeerSocket] {
        let now = ContinuousClock.now
        var dropped: [PeerSocket] = []
        for (address, sockets) in idle where sockets.contains(where: { now - $0.idleSince > limit }) {
            idle[address] = sockets.filter { now - $0.idleSince <= limit }
            dropped += sockets.filter { now - $0.idleSince > limit }
        }
        return dropped
    }
}
