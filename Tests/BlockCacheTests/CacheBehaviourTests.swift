import Dispatch
import Foundation
import Synchronization
import SystemPackage
import TestSupport
import Testing

@testable import BlockCache

// MARK: Helpers

private func version(
    device: UInt64 = 1, inode: UInt64 = 1, size: Int64 = 1 << 30,
    mtime: Int64 = 100, mtimeNanoseconds: Int64 = 0, ctime: Int64 = 100
) -> FileVersion {
    FileVersion(
        identity: .inode(device: device, inode: inode), size: size,
        modified: Timestamp(seconds: mtime, nanoseconds: mtimeNanoseconds),
        changed: Timestamp(seconds: ctime, nanoseconds: 0)
    )
}

private func key(_ index: Int64, _ file: FileVersion = version()) -> BlockKey { BlockKey(file: file, index: index) }

/// The bytes a loader writes for `seed`: different seeds give different bytes at almost every offset.
private func pattern(_ seed: Int, count: Int) -> [UInt8] {
    if count <= 4096, seed >= 0, seed < patterns.count { return Array(patterns[seed][..<count]) }
    return makePattern(seed, count: count)
}

private func makePattern(_ seed: Int, count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 131 &+ ($0 >> 8) &* seed) }
}

/// Patterns computed once: debug builds are slow at building arrays byte by byte.
private let patterns: [[UInt8]] = (0..<128).map { makePattern($0, count: 4096) }

/// Whether `block` holds exactly `pattern(seed, count:)`.
private func holds(_ block: Block, _ seed: Int, count: Int) -> Bool {
    guard block.count == count else { return false }
    guard count > 0 else { return true }
    return withExtendedLifetime(block) {
        pattern(seed, count: count).withUnsafeBytes { memcmp($0.baseAddress!, block.bytes.baseAddress!, count) == 0 }
    }
}

/// A loader that fills the whole buffer with `pattern(seed)`.
private func fill(_ seed: Int) -> (UnsafeMutableRawBufferPointer) throws -> Int {
    { buffer in
        pattern(seed, count: buffer.count).withUnsafeBytes { buffer.copyMemory(from: $0) }
        return buffer.count
    }
}

/// A loader that must not run (the block should be a hit).
private func mustNotLoad(_ buffer: UnsafeMutableRawBufferPointer) throws -> Int {
    Issue.record("a block expected to be resident was loaded again")
    return 0
}

private func contents(_ block: Block) -> [UInt8] { withExtendedLifetime(block) { Array(block.bytes) } }

/// Starts `body` on `count` threads at once (concurrentPerform would use only as many threads as cores);
/// the group is done when all have returned.
private func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) -> DispatchGroup {
    let done = DispatchGroup()
    for number in 0..<count {
        done.enter()
        Thread {
            body(number); done.leave()
        }.start()
    }
    return done
}

/// Polls until `condition` holds, for at most five seconds; returns whether it held.
@discardableResult
private func waitUntil(_ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(5)
    while !condition() {
        if Date() >= deadline { return false }
        usleep(1_000)
    }
    return true
}

private struct CustomLoadError: Error, Equatable {}

// MARK: Recency

@Suite("Block cache: recency")
struct RecencyTests {
    @Test("keysByRecency is oldest first; a hit moves a block to most recent; eviction takes the least recently used")
    func lruOrder() throws {
        let cache = BlockCache(capacity: 4 * 4096, blockSize: 4096)
        for index in 0..<4 { _ = try cache.block(for: key(Int64(index)), length: 4096, load: fill(index)) }
        #expect(cache.keysByRecency == [key(0), key(1), key(2), key(3)])

        #expect(contents(try cache.block(for: key(1), length: 4096, load: mustNotLoad)) == pattern(1, count: 4096))
        #expect(cache.keysByRecency == [key(0), key(2), key(3), key(1)])
        _ = try cache.block(for: key(0), length: 4096, load: mustNotLoad)
        #expect(cache.keysByRecency == [key(2), key(3), key(1), key(0)])
        _ = try cache.block(for: key(0), length: 4096, load: mustNotLoad) // already the most recent
        #expect(cache.keysByRecency == [key(2), key(3), key(1), key(0)])

        _ = try cache.block(for: key(4), length: 4096, load: fill(4)) // evicts 2, the least recently used
        #expect(cache.keysByRecency == [key(3), key(1), key(0), key(4)])
        #expect(!cache.contains(key(2)))
        _ = try cache.block(for: key(5), length: 4096, load: fill(5)) // evicts 3
        #expect(cache.keysByRecency == [key(1), key(0), key(4), key(5)])
        #expect(!cache.contains(key(3)))

        let statistics = cache.statistics
        #expect(statistics.hits == 3)
        #expect(statistics.misses == 6)
        #expect(statistics.evictions == 2)
        #expect(statistics.evictedBytes == 2 * 4096)
        #expect(statistics.residentBlocks == 4 && statistics.residentBytes == 4 * 4096)

        // An evicted block is loaded again, and is then the most recent.
        #expect(contents(try cache.block(for: key(2), length: 4096, load: fill(2))) == pattern(2, count: 4096))
        #expect(cache.keysByRecency == [key(0), key(4), key(5), key(2)])
    }

    @Test("contains answers without touching recency or the counters")
    func containsKeepsRecency() throws {
        let cache = BlockCache(capacity: 3 * 4096, blockSize: 4096)
        for index in 0..<3 { _ = try cache.block(for: key(Int64(index)), length: 4096, load: fill(index)) }
        let before = cache.statistics
        #expect(cache.contains(key(0)))
        #expect(!cache.contains(key(9)))
        #expect(cache.keysByRecency == [key(0), key(1), key(2)])
        #expect(cache.statistics == before)
        _ = try cache.block(for: key(3), length: 4096, load: fill(3))
        #expect(!cache.contains(key(0)), "the block contains asked about was still the least recently used")
        #expect(cache.contains(key(1)))
    }

    @Test("1,000 distinct blocks through a 10-block cache: resident bytes stay within capacity")
    func boundOneThread() throws {
        let cache = BlockCache(capacity: 10 * 4096, blockSize: 4096)
        var overshoots: [Int] = [] // loads after which resident bytes exceeded the capacity
        var wrongBlocks: [Int] = []
        var leftReservations: [Int] = []
        for index in 0..<1000 {
            let length = index % 7 == 0 ? 1000 : 4096 // a file's short last block
            let returned = index % 5 == 0 ? length / 3 : length // the source ended early
            let block = try cache.block(for: key(Int64(index)), length: length) { buffer in
                pattern(index % 100, count: returned).withUnsafeBytes { buffer.copyMemory(from: $0) }
                return returned
            }
            if !holds(block, index % 100, count: returned) { wrongBlocks.append(index) }
            let statistics = cache.statistics
            if statistics.residentBytes > cache.capacity { overshoots.append(index) }
            if statistics.reservedBytes != 0 { leftReservations.append(index) }
        }
        #expect(overshoots.isEmpty)
        #expect(wrongBlocks.isEmpty)
        #expect(leftReservations.isEmpty)
        let statistics = cache.statistics
        #expect(statistics.misses == 1000)
        #expect(statistics.residentBlocks >= 10, "the cache should fill up, not evict everything")
        #expect(statistics.evictions == statistics.misses - UInt64(statistics.residentBlocks))
        #expect(statistics.loadedBytes == statistics.evictedBytes + UInt64(statistics.residentBytes))
        #expect(cache.keysByRecency.last == key(999))
        #expect(cache.keysByRecency.count == statistics.residentBlocks)
    }

    @Test("Eight threads, overlapping keys: the bound holds after every call and every block has its own bytes")
    func boundEightThreads() throws {
        let cache = BlockCache(capacity: 10 * 4096, blockSize: 4096)
        let loads = Atomic<Int>(0)
        let overshoots = Atomic<Int>(0)
        let wrongBytes = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let callsPerThread = 400
        let done = onThreads(8) { thread in
            var random = SplitMix64(seed: UInt64(thread + 1))
            for _ in 0..<callsPerThread {
                let index = Int.random(in: 0..<48, using: &random)
                let length = index % 6 == 0 ? 2000 : 4096
                do {
                    let block = try cache.block(for: key(Int64(index)), length: length) { buffer in
                        loads.add(1, ordering: .relaxed)
                        return try fill(index)(buffer)
                    }
                    if !holds(block, index, count: length) { wrongBytes.add(1, ordering: .relaxed) }
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
                let statistics = cache.statistics
                if statistics.residentBytes + statistics.reservedBytes > cache.capacity {
                    overshoots.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(done.wait(timeout: .now() + 30) == .success)
        #expect(overshoots.load(ordering: .relaxed) == 0)
        #expect(wrongBytes.load(ordering: .relaxed) == 0)
        #expect(failures.load(ordering: .relaxed) == 0)

        let statistics = cache.statistics
        #expect(statistics.residentBytes <= cache.capacity)
        #expect(statistics.reservedBytes == 0)
        #expect(statistics.hits + statistics.misses + statistics.coalescedMisses == UInt64(8 * callsPerThread))
        #expect(statistics.misses == UInt64(loads.load(ordering: .relaxed)))
        #expect(statistics.evictions > 0)
        // Eight loads in flight never fill a 10-block cache, so every loaded block (and every evicted
        // block a reader still held and a lookup took back) was kept until evicted.
        #expect(statistics.loadedBytes + statistics.reclaimedBytes == statistics.evictedBytes + UInt64(statistics.residentBytes))
        #expect(statistics.evictions == statistics.misses + statistics.reclaimedBlocks - UInt64(statistics.residentBlocks))
    }

    @Test("Loads in flight that would overflow the capacity still return their bytes but are not kept")
    func loadsBeyondCapacity() throws {
        let cache = BlockCache(capacity: 2 * 4096, blockSize: 4096)
        let started = Atomic<Int>(0)
        let release = DispatchSemaphore(value: 0)
        let results = Mutex<[Int: [UInt8]]>([:])
        let done = onThreads(4) { thread in
            let block = try? cache.block(for: key(Int64(thread)), length: 4096) { buffer in
                started.add(1, ordering: .relaxed)
                _ = release.wait(timeout: .now() + 5)
                return try fill(thread)(buffer)
            }
            results.withLock { $0[thread] = block.map(contents) }
        }
        #expect(waitUntil { started.load(ordering: .relaxed) == 4 })
        let whileLoading = cache.statistics
        #expect(whileLoading.reservedBytes <= cache.capacity)
        #expect(whileLoading.reservedBytes == 2 * 4096, "two loads reserve the whole capacity")
        for _ in 0..<4 { release.signal() }
        #expect(done.wait(timeout: .now() + 10) == .success)

        let statistics = cache.statistics
        #expect(results.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<4).map { ($0, pattern($0, count: 4096)) }))
        #expect(statistics.residentBlocks == 2)
        #expect(statistics.residentBytes == 2 * 4096)
        #expect(statistics.reservedBytes == 0)
        #expect(statistics.loadedBytes == 4 * 4096)
        #expect(statistics.evictions == 0)
    }
}

// MARK: Keys and lengths

@Suite("Block cache: keys and lengths")
struct KeyTests {
    @Test("Versions differing only in size, mtime, ctime, inode or device never return each other's blocks")
    func versionsDoNotShareBlocks() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let versions = [
            version(),
            version(size: 999),
            version(mtime: 101),
            version(mtimeNanoseconds: 1),
            version(ctime: 101),
            version(inode: 2),
            version(device: 2),
        ]
        #expect(Set(versions).count == versions.count)
        for (number, file) in versions.enumerated() {
            let block = try cache.block(for: key(0, file), length: 4096, load: fill(number))
            #expect(contents(block) == pattern(number, count: 4096))
        }
        #expect(cache.statistics.misses == UInt64(versions.count), "a version was answered with another's block")
        for (number, file) in versions.enumerated() {
            let block = try cache.block(for: key(0, file), length: 4096, load: mustNotLoad)
            #expect(contents(block) == pattern(number, count: 4096), "version \(number)")
        }
        #expect(cache.statistics.hits == UInt64(versions.count))
        // The same version at another index is another block too.
        #expect(contents(try cache.block(for: key(1), length: 4096, load: fill(77))) == pattern(77, count: 4096))
    }

    @Test("A load that returns fewer bytes than asked gives a block of that many bytes")
    func shortLoad() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let block = try cache.block(for: key(0), length: 4096) { buffer in
            buffer.copyBytes(from: pattern(3, count: 100))
            return 100
        }
        #expect(block.count == 100)
        #expect(contents(block) == pattern(3, count: 100))
        #expect(cache.statistics.residentBytes == 100)
        #expect(cache.statistics.loadedBytes == 100)
        let hit = try cache.block(for: key(0), length: 4096, load: mustNotLoad)
        #expect(hit.count == 100)

        let empty = try cache.block(for: key(1), length: 4096, load: { _ in 0 })
        #expect(empty.count == 0)
        let shortLength = try cache.block(for: key(2), length: 10, load: fill(2))
        #expect(shortLength.count == 10 && contents(shortLength) == pattern(2, count: 10))
        let overlong = try cache.block(for: key(3), length: 64, load: { _ in 10_000 })
        #expect(overlong.count == 64, "a loader cannot claim more bytes than the block holds")
    }
}

// MARK: Concurrency

@Suite("Block cache: concurrent loads", .serialized)
struct ConcurrentLoadTests {
    @Test("16 threads missing the same block share one load and get identical bytes")
    func coalescing() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let loads = Atomic<Int>(0)
        let release = DispatchSemaphore(value: 0)
        let blocks = Mutex<[Block?]>([])
        let done = onThreads(16) { _ in
            let block = try? cache.block(for: key(7), length: 4096) { buffer in
                loads.add(1, ordering: .relaxed)
                _ = release.wait(timeout: .now() + 5)
                return try fill(42)(buffer)
            }
            blocks.withLock { $0.append(block) }
        }
        // The load is blocked: every other thread must be waiting for it, not loading.
        // (The loading thread may register its load and be descheduled before its closure counts.)
        #expect(waitUntil { cache.statistics.coalescedMisses == 15 && loads.load(ordering: .relaxed) >= 1 })
        #expect(loads.load(ordering: .relaxed) == 1)
        #expect(cache.isResidentOrLoading(key(7)) && !cache.contains(key(7)))
        release.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)

        let results = blocks.withLock { $0 }
        #expect(results.count == 16)
        #expect(results.allSatisfy { $0.map(contents) == pattern(42, count: 4096) })
        #expect(Set(results.compactMap { $0.map(ObjectIdentifier.init) }).count == 1, "waiters share the loaded block")
        #expect(loads.load(ordering: .relaxed) == 1)
        let statistics = cache.statistics
        #expect(statistics.misses == 1)
        #expect(statistics.coalescedMisses == 15)
        #expect(statistics.hits == 0)
        #expect(statistics.loadedBytes == 4096)
        #expect(statistics.residentBlocks == 1)
    }

    @Test("A load error reaches the loader and every waiter, is counted, and is not cached")
    func errorPropagation() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let loads = Atomic<Int>(0)
        let release = DispatchSemaphore(value: 0)
        let errors = Mutex<[Errno?]>([])
        let done = onThreads(8) { _ in
            do {
                _ = try cache.block(
                    for: key(1), length: 4096,
                    load: { _ in
                        loads.add(1, ordering: .relaxed)
                        _ = release.wait(timeout: .now() + 5)
                        throw Errno.ioError
                    })
                errors.withLock { $0.append(nil) }
            } catch {
                errors.withLock { $0.append(error as? Errno) }
            }
        }
        #expect(waitUntil { cache.statistics.coalescedMisses == 7 })
        release.signal()
        #expect(done.wait(timeout: .now() + 10) == .success)

        #expect(errors.withLock { $0 } == Array(repeating: .ioError, count: 8))
        #expect(loads.load(ordering: .relaxed) == 1)
        var statistics = cache.statistics
        #expect(statistics.misses == 1 && statistics.coalescedMisses == 7)
        #expect(statistics.residentBytes == 0 && statistics.residentBlocks == 0)
        #expect(statistics.reservedBytes == 0, "a failed load must give back its reservation")
        #expect(statistics.loadedBytes == 0)
        #expect(!cache.isResidentOrLoading(key(1)))

        // The failure is not cached: the next read tries the source again, and can succeed.
        let block = try cache.block(for: key(1), length: 4096) { buffer in
            loads.add(1, ordering: .relaxed)
            return try fill(5)(buffer)
        }
        #expect(loads.load(ordering: .relaxed) == 2)
        #expect(contents(block) == pattern(5, count: 4096))
        statistics = cache.statistics
        #expect(statistics.misses == 2)
        #expect(cache.contains(key(1)))

        // Errors that are not Errno come through unchanged too.
        #expect(throws: CustomLoadError()) {
            _ = try cache.block(for: key(2), length: 4096, load: { _ in throw CustomLoadError() })
        }
        #expect(!cache.contains(key(2)))
    }

    @Test("The lock is not held while a block loads: hits and other loads proceed")
    func loadsDoNotBlockOthers() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        _ = try cache.block(for: key(0), length: 4096, load: fill(0))
        let loading = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let slowDone = DispatchSemaphore(value: 0)
        // Threads of their own: Dispatch adds pool threads only slowly while one is blocked.
        Thread {
            _ = try? cache.block(for: key(1), length: 4096) { buffer in
                loading.signal()
                _ = release.wait(timeout: .now() + 10)
                return try fill(1)(buffer)
            }
            slowDone.signal()
        }.start()
        #expect(loading.wait(timeout: .now() + 5) == .success)
        defer { release.signal() } // never leave the loader blocked, whatever fails below

        // These all take the lock; they would hang if the load held it.
        #expect(cache.isResidentOrLoading(key(1)) && !cache.contains(key(1)), "a block being loaded is loading, not resident")
        #expect(!cache.isResidentOrLoading(key(5)))
        #expect(cache.statistics.misses == 2)

        let hit = Mutex<[UInt8]?>(nil)
        let other = Mutex<[UInt8]?>(nil)
        let othersDone = DispatchSemaphore(value: 0)
        Thread {
            let block = try? cache.block(for: key(0), length: 4096, load: mustNotLoad) // a hit
            hit.withLock { $0 = block.map(contents) }
            let loaded = try? cache.block(for: key(2), length: 4096, load: fill(2)) // another load
            other.withLock { $0 = loaded.map(contents) }
            othersDone.signal()
        }.start()
        #expect(othersDone.wait(timeout: .now() + 5) == .success, "a hit and another load waited for an unrelated load")
        #expect(hit.withLock { $0 } == pattern(0, count: 4096))
        #expect(other.withLock { $0 } == pattern(2, count: 4096))
        #expect(slowDone.wait(timeout: .now()) == .timedOut, "the slow load finished before it was released")

        release.signal()
        #expect(slowDone.wait(timeout: .now() + 5) == .success)
        #expect(cache.contains(key(1)))
    }
}
