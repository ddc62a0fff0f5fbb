import CLinux

#if canImport(Glibc)
import Glibc
#endif

/// Where one received block goes: its memory, readable once received, and, when that memory
/// maps a range of a file (a version's memory file), the file and offset the bytes are
/// spliced into, so that they go from the socket to their final place in one kernel copy.
public struct ReceiveTarget: @unchecked Sendable {
    // @unchecked: the memory belongs to the load that claimed it; one fetching thread writes it.
    public let memory: UnsafeMutableRawBufferPointer
    public let file: (descriptor: Int32, offset: Int64)?

    public init(memory: UnsafeMutableRawBufferPointer, file: (descriptor: Int32, offset: Int64)?) {
        self.memory = memory
        self.file = file
    }
}

/// Why an exchange with a peer failed; its description is what the log and the outcome show.
struct PeerExchangeError: Error, CustomStringConvertible {
    enum Kind { case timedOut, closed, failed }
    let kind: Kind
    let description: String

    static func timedOut(_ what: String) -> Self { Self(kind: .timedOut, description: "no \(what) in time") }
    static func closed(_ what: String) -> Self { Self(kind: .closed, description: "connection closed \(what)") }
    static func failed(_ description: String) -> Self { Self(kind: .failed, description: description) }
    static func system(_ call: String) -> Self { Self(kind: .failed, description: "\(call): \(String(cString: strerror(errno)))") }
}

/// The status line and headers of an HTTP/1.1 response from a peer server.
struct ResponseHead: Equatable {
    var status: Int
    /// Header names lowercased, values trimmed.
    var headers: [(name: String, value: String)]

    static func == (a: ResponseHead, b: ResponseHead) -> Bool {
        a.status == b.status && a.headers.elementsEqual(b.headers) { $0.name == $1.name && $0.value == $1.value }
    }

    subscript(name: String) -> String? {
        let lowercased = name.lowercased()
        return headers.first { $0.name == lowercased }?.value
    }

    var contentLength: Int? { self["content-length"].flatMap { Int($0) }.flatMap { $0 >= 0 ? $0 : nil } }

    /// HTTP/1.1 keeps the connection unless the server says otherwise.
    var keepsConnection: Bool { self["connection"]?.lowercased() != "close" }

    /// Parses the bytes of a response head, its final empty line excluded; nil if it is not one.
    init?(_ bytes: some Collection<UInt8>) {
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).map { line in
            String(decoding: line.last == UInt8(ascii: "\r") ? line.dropLast() : line[...], as: UTF8.self)
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1."),
            case let parts = statusLine.split(separator: " ", maxSplits: 2), parts.count >= 2,
            parts[1].count == 3, let status = Int(parts[1])
        else { return nil }
        self.status = status
        headers = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { return nil }
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            headers.append((line[..<colon].lowercased(), String(value.reversed().drop { $0 == " " || $0 == "\t" }.reversed())))
        }
    }
}

/// One TCP connection to a peer, driven by blocking calls on the fetching thread (a FUSE
/// worker or a prefetch lane), each bounded by the exchange's deadline: no event loop and no
/// hand-off between threads stands between the socket and the block's memory.
///
/// A socket is used by one thread at a time: it is either idle in its pool (under the pool's
/// lock) or checked out by the one thread running an exchange on it.
final class PeerSocket: @unchecked Sendable {
    let descriptor: Int32
    let peer: PeerAddress
    /// A pipe the body is spliced through on its way from the socket to a memory file; made on first use.
    private var pipe: (read: Int32, write: Int32, capacity: Int)?
    /// splice(2) refused (a seccomp filter, an old kernel): bodies are received with recv(2) instead.
    private var spliceUnavailable = false
    /// When the last exchange ended, for closing connections idle too long.
    var idleSince = ContinuousClock.now
    /// The socket's SO_RCVLOWAT: how many bytes must have arrived before a blocked receive wakes.
    private var lowWater = 1
    /// The most a receive waits for at once: a block's body wakes its thread a few times, not once per
    /// segment (on loopback, a wake-up every 64 KiB cost a fifth of the receiving instance's CPU).
    static let wakeEvery = 512 << 10

    private init(descriptor: Int32, peer: PeerAddress) {
        self.descriptor = descriptor
        self.peer = peer
    }

    deinit {
        close(descriptor)
        if let pipe {
            close(pipe.read)
            close(pipe.write)
        }
    }

    /// Connects to a numeric address, waiting at most `timeout`.
    static func connect(to peer: PeerAddress, timeout: Duration) throws(PeerExchangeError) -> PeerSocket {
        // getaddrinfo with a numeric host and service only converts the address (no DNS), for IPv4 and IPv6 alike.
        var hints = addrinfo()
        hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(peer.host, String(peer.port), &hints, &found) == 0, let entry = found else {
            throw .failed("not a numeric address: \(peer)")
        }
        defer { freeaddrinfo(found) }
        var storage = sockaddr_storage()
        let length = entry.pointee.ai_addrlen
        withUnsafeMutableBytes(of: &storage) {
            $0.copyMemory(from: UnsafeRawBufferPointer(start: entry.pointee.ai_addr, count: Int(length)))
        }
        let fd = socket(
            Int32(storage.ss_family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw .system("socket") }
        let socket = PeerSocket(descriptor: fd, peer: peer) // closes fd on every exit below
        let started = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
        }
        if started != 0 {
            guard errno == EINPROGRESS else { throw .system("connect") }
            var poll = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            guard Glibc.poll(&poll, 1, Int32(timeout.milliseconds)) == 1 else { throw .timedOut("connection") }
            var failure: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &failure, &size)
            guard failure == 0 else { throw .failed("connect: \(String(cString: strerror(failure)))") }
        }
        // Blocking from now on: each call's wait is bounded with SO_RCVTIMEO/SO_SNDTIMEO.
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return socket
    }

    /// Whether the peer closed the connection (or sent something unasked) while it was idle.
    var isClosedByPeer: Bool {
        var poll = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0) // readable while idle: closed (EOF), or bytes nobody asked for
        return Glibc.poll(&poll, 1, 0) != 0
    }

    func send(_ bytes: [UInt8], deadline: ContinuousClock.Instant) throws(PeerExchangeError) {
        var sent = 0
        while sent < bytes.count {
            try setTimeout(SO_SNDTIMEO, until: deadline, waitingFor: "request sent")
            let count = bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut("request sent") }
                throw .system("send")
            }
            sent += count
        }
    }

    /// Reads up to the end of a response head; returns it with the body bytes that arrived with it.
    func receiveHead(deadline: ContinuousClock.Instant) throws(PeerExchangeError) -> (head: ResponseHead, leftover: ArraySlice<UInt8>) {
        wakeWhen(bytesArrived: 1)
        var buffer = [UInt8](repeating: 0, count: 16 << 10)
        var filled = 0
        while true {
            try setTimeout(SO_RCVTIMEO, until: deadline, waitingFor: "answer")
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress! + filled, $0.count - filled, 0) }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut("answer") }
                throw .system("recv")
            }
            guard count > 0 else { throw .closed(filled == 0 ? "before an answer" : "in the middle of an answer's head") }
            let searchFrom = max(0, filled - 3)
            filled += count
            if let end = Self.endOfHead(in: buffer[searchFrom..<filled]) {
                guard let head = ResponseHead(buffer[..<end]) else { throw .failed("not an HTTP response") }
                return (head, buffer[(end + 4)..<filled])
            }
            guard filled < buffer.count else { throw .failed("response head over \(buffer.count) bytes") }
        }
    }

    private static func endOfHead(in bytes: ArraySlice<UInt8>) -> Int? {
        let terminator: [UInt8] = [13, 10, 13, 10]
        var index = bytes.startIndex
        while index + 4 <= bytes.endIndex {
            if bytes[index] == 13, bytes[index..<(index + 4)].elementsEqual(terminator) { return index }
            index += 1
        }
        return nil
    }

    /// Receives `length` bytes into `target` (the leftover of the head first, then the socket),
    /// and returns their CRC-32C, computed over the memory once the bytes are in place.
    func receiveBlock(
        into target: ReceiveTarget, length: Int, leftover: inout ArraySlice<UInt8>,
        deadline: ContinuousClock.Instant
    ) throws(PeerExchangeError) -> CRC32CChecksum {
        precondition(length <= target.memory.count)
        var received = min(leftover.count, length)
        if received > 0 {
            leftover.prefix(received).withUnsafeBytes { bytes in
                if let file = target.file {
                    _ = pwrite(file.descriptor, bytes.baseAddress, bytes.count, off_t(file.offset))
                } else {
                    target.memory.copyMemory(from: bytes)
                }
            }
            leftover = leftover.dropFirst(received)
        }
        if received < length, let file = target.file, !spliceUnavailable {
            received += try splice(length - received, into: file.descriptor, at: file.offset + Int64(received), deadline: deadline)
        }
        if received < length {
            let rest = UnsafeMutableRawBufferPointer(rebasing: target.memory[received..<length])
            if target.file != nil { Self.populate(rest, CACHEFS_MADV_POPULATE_WRITE) } // one call maps the pages, not a fault each
            try receiveAll(into: rest, deadline: deadline)
        }
        let bytes = UnsafeRawBufferPointer(rebasing: target.memory[..<length])
        if target.file != nil { Self.populate(UnsafeMutableRawBufferPointer(mutating: bytes), CACHEFS_MADV_POPULATE_READ) }
        return CRC32CChecksum(of: bytes)
    }

    /// Reads and drops a small body, so that the connection can carry the next exchange.
    func discard(_ length: Int, leftover: inout ArraySlice<UInt8>, deadline: ContinuousClock.Instant) throws(PeerExchangeError) {
        let fromLeftover = min(length, leftover.count)
        leftover = leftover.dropFirst(fromLeftover)
        var scratch = [UInt8](repeating: 0, count: length - fromLeftover)
        try scratch.withUnsafeMutableBytes { buffer in
            Result { () throws(PeerExchangeError) in try receiveAll(into: buffer, deadline: deadline) }
        }.get()
    }

    /// Reads the body into memory: recv(MSG_WAITALL), repeated after a timeout's partial answer.
    func receiveAll(into buffer: UnsafeMutableRawBufferPointer, deadline: ContinuousClock.Instant) throws(PeerExchangeError) {
        var received = 0
        while received < buffer.count {
            try setTimeout(SO_RCVTIMEO, until: deadline, waitingFor: "body")
            wakeWhen(bytesArrived: min(buffer.count - received, Self.wakeEvery))
            let count = recv(descriptor, buffer.baseAddress! + received, buffer.count - received, Int32(MSG_WAITALL))
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut("body") }
                throw .system("recv")
            }
            guard count > 0 else { throw .closed("in the middle of a body (\(received) of \(buffer.count) bytes)") }
            received += count
        }
    }

    /// Moves `length` bytes from the socket into `file` at `offset` through the pipe: the socket's
    /// pages go into the pipe by reference, and from there into the file with one copy.
    /// Returns the bytes moved; 0 if splice(2) is refused here before any byte moved (the caller receives them).
    private func splice(_ length: Int, into file: Int32, at offset: Int64, deadline: ContinuousClock.Instant) throws(PeerExchangeError)
        -> Int
    {
        guard let pipe = try pipeForSplice() else { return 0 }
        var moved = 0
        var position = offset
        while moved < length {
            try setTimeout(SO_RCVTIMEO, until: deadline, waitingFor: "body")
            wakeWhen(bytesArrived: min(length - moved, Self.wakeEvery, pipe.capacity))
            let count = cachefs_splice(
                descriptor, nil, pipe.write, nil, min(length - moved, pipe.capacity),
                CACHEFS_SPLICE_F_MOVE | CACHEFS_SPLICE_F_MORE)
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut("body") }
                if moved == 0, errno == EINVAL || errno == ENOSYS || errno == EPERM {
                    spliceUnavailable = true
                    return 0
                }
                throw .system("splice from the socket")
            }
            guard count > 0 else { throw .closed("in the middle of a body (\(moved) of \(length) bytes)") }
            var inPipe = count
            while inPipe > 0 {
                let written = cachefs_splice(pipe.read, nil, file, &position, inPipe, CACHEFS_SPLICE_F_MOVE)
                if written < 0, errno == EINTR { continue }
                // Bytes left in the pipe would mix with the next body: the connection cannot be kept.
                guard written > 0 else { throw .system("splice into block memory") }
                inPipe -= written
            }
            moved += count
        }
        return moved
    }

    private func pipeForSplice() throws(PeerExchangeError) -> (read: Int32, write: Int32, capacity: Int)? {
        if let pipe { return pipe }
        var ends: [Int32] = [0, 0]
        guard Glibc.pipe(&ends) == 0 else {
            spliceUnavailable = true
            return nil
        }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        // A block (1 MiB by default) in one pass where the pipe may be that large; otherwise in pieces.
        _ = cachefs_set_pipe_size(ends[1], 1 << 20)
        let made = (read: ends[0], write: ends[1], capacity: max(4096, Int(cachefs_pipe_size(ends[1]))))
        pipe = made
        return made
    }

    /// Sets SO_RCVLOWAT, so that a blocked receive wakes once `bytes` have arrived (never more than the
    /// rest of the body, or it would wait for bytes that are not coming until its timeout).
    private func wakeWhen(bytesArrived bytes: Int) {
        guard bytes != lowWater else { return }
        var value = Int32(bytes)
        if setsockopt(descriptor, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 { lowWater = bytes }
    }

    /// Bounds the next blocking call by what is left until `deadline`.
    private func setTimeout(_ option: Int32, until deadline: ContinuousClock.Instant, waitingFor what: String) throws(PeerExchangeError) {
        let left = deadline - .now
        guard left > .zero else { throw .timedOut(what) }
        let microseconds = max(1000, left.microseconds)
        var timeout = timeval(tv_sec: microseconds / 1_000_000, tv_usec: suseconds_t(microseconds % 1_000_000))
        setsockopt(descriptor, SOL_SOCKET, option, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Maps a range's pages with one madvise where the kernel can (5.14+); harmless where it cannot.
    private static func populate(_ range: UnsafeMutableRawBufferPointer, _ advice: Int32) {
        guard let base = range.baseAddress, range.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: base) & ~(page - 1)
        let end = Int(bitPattern: base) + range.count
        _ = madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, advice)
    }
}

extension Duration {
    var milliseconds: Int64 { components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000 }
    var microseconds: Int { Int(components.seconds) * 1_000_000 + Int(components.attoseconds / 1_000_000_000_000) }
}
