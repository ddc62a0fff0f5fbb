import BlockCache
import Dispatch
import Foundation
import Synchronization
import SystemPackage
import Testing

private func version(inode: UInt64 = 1, size: Int64 = 1 << 30, mtime: Int64 = 100, ctime: Int64 = 100) -> FileVersion {
    FileVersion(device: 1, inode: inode, size: size,
                modified: Timestamp(seconds: mtime, nanoseconds: 0), changed: Timestamp(seconds: ctime, nanoseconds: 0))
}

private func key(_ index: Int64, _ file: FileVersion = version()) -> BlockKey { BlockKey(file: file, index: index) }

/// Fills a block with `byte` and returns its length.
private func fill(_ byte: UInt8) -> (UnsafeMutableRawBufferPointer) throws -> Int {
    { buffer in
        buffer.initializeMemory(as: UInt8.self, repeating: byte)
        return buffer.count
    }
}

/// Runs `body` on `count` threads at once (concurrentPerform would use only as many threads as cores).
private func onThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let done = DispatchGroup()
    for number in 0..<count {
        done.enter()
        Thread { body(number); done.leave() }.start()
    }
    done.wait()
}

/// Polls until `condition` holds, for at most five seconds.
private func waitUntil(_ condition: () -> Bool) {
    let deadline = Date().addingTimeInterval(5)
    while !condition() && Date() < deadline { usleep(1_000) }
}

private func firstByte(_ block: Block) -> UInt8 { withExtendedLifetime(block) { block.bytes[0] } }

@Suite("Block cache")
struct CacheBehaviourTests {
    @Test("Hits move a block to most recent; eviction takes the least recently used")
    func lruOrder() throws {
        let cache = BlockCache(capacity: 3 * 4096, blockSize: 4096)
        for index in 0..<3 { _ = try cache.block(for: key(Int64(index)), length: 4096, load: fill(UInt8(index))) }
        #expect(cache.keysByRecency == [key(0), key(1), key(2)])
        _ = try cache.block(for: key(0), length: 4096, load: fill(99)) // hit
        #expect(cache.keysByRecency == [key(1), key(2), key(0)])
        _ = try cache.block(for: key(3), length: 4096, load: fill(3))  // evicts 1
        #expect(cache.keysByRecency == [key(2), key(0), key(3)])
        #expect(!cache.contains(key(1)))
        #expect(cache.statistics.hits == 1 && cache.statistics.misses == 4 && cache.statistics.evictions == 1)
        #expect(firstByte(try cache.block(for: key(0), length: 4096, load: fill(99))) == 0, "a hit returns the cached bytes")
    }

    @Test("Resident bytes never exceed the capacity, from one thread or eight")
    func capacityBound() throws {
        let cache = BlockCache(capacity: 10 * 4096, blockSize: 4096)
        for index in 0..<1000 {
            let length = index % 7 == 0 ? 1000 : 4096
            _ = try cache.block(for: key(Int64(index)), length: length, load: fill(1))
            #expect(cache.statistics.residentBytes <= cache.capacity)
        }
        let overshoot = Atomic<Int>(0)
        onThreads(8) { thread in
            for index in 0..<500 {
                _ = try? cache.block(for: key(Int64(10_000 + thread * 1000 + index)), length: 4096, load: fill(2))
                let statistics = cache.statistics
                if statistics.residentBytes + statistics.reservedBytes > cache.capacity { overshoot.add(1, ordering: .relaxed) }
            }
        }
        #expect(overshoot.load(ordering: .relaxed) == 0)
        #expect(cache.statistics.residentBytes <= cache.capacity)
        #expect(cache.statistics.evictions >= 4990)
    }

    @Test("Versions differing in size, mtime, ctime or inode never share blocks")
    func versionKeys() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let versions = [version(), version(size: 999), version(mtime: 101), version(ctime: 101), version(inode: 2)]
        for (number, file) in versions.enumerated() {
            _ = try cache.block(for: key(0, file), length: 4096, load: fill(UInt8(number)))
        }
        for (number, file) in versions.enumerated() {
            #expect(firstByte(try cache.block(for: key(0, file), length: 4096, load: fill(255))) == UInt8(number))
        }
    }

    @Test("Concurrent misses on one block share a single load")
    func coalescing() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let loads = Atomic<Int>(0)
        let firstBytes = Mutex<[UInt8]>([])
        onThreads(16) { _ in
            let block = try? cache.block(for: key(7), length: 4096) { buffer in
                loads.add(1, ordering: .relaxed)
                waitUntil { cache.statistics.coalescedMisses == 15 } // every other reader is waiting for this load
                buffer.initializeMemory(as: UInt8.self, repeating: 42)
                return buffer.count
            }
            firstBytes.withLock { $0.append(block.map(firstByte) ?? 0) }
        }
        #expect(loads.load(ordering: .relaxed) == 1)
        #expect(firstBytes.withLock { $0 } == Array(repeating: 42, count: 16))
        #expect(cache.statistics.misses == 1 && cache.statistics.coalescedMisses == 15)
    }

    @Test("A load error reaches the loader and every waiter, and is not cached")
    func errorPropagation() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let failures = Atomic<Int>(0)
        onThreads(4) { _ in
            do {
                _ = try cache.block(for: key(1), length: 4096) { _ in
                    waitUntil { cache.statistics.coalescedMisses == 3 }
                    throw Errno.ioError
                }
            } catch let error as Errno where error == .ioError {
                failures.add(1, ordering: .relaxed)
            } catch {}
        }
        #expect(failures.load(ordering: .relaxed) == 4)
        #expect(cache.statistics.loadErrors == 1)
        #expect(!cache.contains(key(1)))
        #expect(firstByte(try cache.block(for: key(1), length: 4096, load: fill(5))) == 5, "the next read tries the source again")
    }

    @Test("A short load gives a short block")
    func shortLoad() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        let block = try cache.block(for: key(0), length: 4096) { _ in 100 }
        #expect(block.count == 100)
        #expect(cache.statistics.residentBytes == 100)
    }

    @Test("No lock is held while a block loads")
    func loadsDoNotBlockOthers() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        _ = try cache.block(for: key(0), length: 4096, load: fill(0))
        let loading = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let slowDone = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = try? cache.block(for: key(1), length: 4096) { buffer in
                loading.signal()
                release.wait()
                return buffer.count
            }
            slowDone.signal()
        }
        #expect(loading.wait(timeout: .now() + 5) == .success)
        #expect(cache.isResidentOrLoading(key(1)) && !cache.contains(key(1)), "a block being loaded is loading, not resident")
        #expect(!cache.isResidentOrLoading(key(5)))
        let others = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            _ = try? cache.block(for: key(0), length: 4096, load: fill(9)) // a hit
            _ = try? cache.block(for: key(2), length: 4096, load: fill(2)) // another load
            others.signal()
        }
        #expect(others.wait(timeout: .now() + 5) == .success, "a hit and another load waited for an unrelated load")
        release.signal()
        #expect(slowDone.wait(timeout: .now() + 5) == .success)
    }

    @Test("contains leaves recency alone; removeAll empties the cache")
    func containsAndRemoveAll() throws {
        let cache = BlockCache(capacity: 1 << 20, blockSize: 4096)
        for index in 0..<3 { _ = try cache.block(for: key(Int64(index)), length: 4096, load: fill(1)) }
        #expect(cache.contains(key(0)))
        #expect(cache.keysByRecency == [key(0), key(1), key(2)])
        cache.removeAll()
        #expect(cache.keysByRecency.isEmpty && cache.statistics.residentBytes == 0)
    }
}
