import Dispatch
import Foundation
import MirrorFS
import SourceTree
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The source timeout: a stalled source call costs its caller EIO after the
/// deadline, never a hang, and the pool recovers when the source does.
@Suite struct SourceCallPoolTests {
    @Test("Results and errors of source calls come back to the caller")
    func resultsAndErrors() throws {
        let pool = SourceCallPool(timeout: .seconds(5))
        #expect(try pool.run { () throws(Errno) in 42 } == 42)
        #expect(throws: Errno.noSuchFileOrDirectory) { try pool.run { () throws(Errno) -> Int in throw .noSuchFileOrDirectory } }
        #expect(pool.timedOutCalls == 0)
    }

    @Test("A stalled call fails with ETIMEDOUT after the timeout while other calls go on; idle threads leave")
    func stalledCallTimesOut() throws {
        let pool = SourceCallPool(timeout: .milliseconds(300), idleExit: .milliseconds(200))
        let release = DispatchSemaphore(value: 0)
        let started = Date()
        #expect(throws: Errno.timedOut) {
            try pool.run { () throws(Errno) -> Int in
                release.wait(); return 1
            }
        }
        let waited = Date().timeIntervalSince(started)
        #expect(waited >= 0.3 && waited < 2.0, "waited \(waited) s")
        #expect(pool.timedOutCalls == 1)
        // The stalled thread is still held; a new call gets a thread of its own.
        #expect(try pool.run { () throws(Errno) in 7 } == 7)
        release.signal()
        let deadline = Date().addingTimeInterval(5)
        while pool.threadCount > 0 && Date() < deadline { usleep(20_000) }
        #expect(pool.threadCount == 0, "idle threads should leave")
    }

    @Test("With every thread stuck, new calls time out, and calls given up on are never started")
    func exhaustedPool() throws {
        let pool = SourceCallPool(timeout: .seconds(1), maximumThreads: 2) // long enough for the fence below to be picked up
        let release = DispatchSemaphore(value: 0)
        let lateStarts = Atomic<Int>(0)
        let stuck = Atomic<Int>(0)
        let callers = (0..<2).map { _ in
            Thread {
                _ = try? pool.run { () throws(Errno) -> Int in
                    stuck.add(1, ordering: .relaxed); release.wait(); return 0
                }
            }
        }
        callers.forEach { $0.start() }
        #expect(eventually { stuck.load(ordering: .relaxed) == 2 }, "both threads hold a stuck call")
        #expect(throws: Errno.timedOut) {
            try pool.run { () throws(Errno) -> Int in
                lateStarts.add(1, ordering: .relaxed); return 0
            }
        }
        #expect(pool.threadCount == 2)
        release.signal()
        release.signal()
        // A fence: two calls that only finish once both run at the same time. The queue is FIFO,
        // so both threads have taken the abandoned call (and skipped it, or run it to the end)
        // before they can run these.
        let together = Atomic<Int>(0)
        let fences = (0..<2).map { _ in
            Thread {
                _ = try? pool.run { () throws(Errno) -> Bool in
                    together.add(1, ordering: .relaxed)
                    return eventually { together.load(ordering: .relaxed) == 2 }
                }
            }
        }
        fences.forEach { $0.start() }
        #expect(eventually { together.load(ordering: .relaxed) == 2 }, "both threads came free")
        #expect(lateStarts.load(ordering: .relaxed) == 0, "an abandoned call ran after its caller left")
        #expect(try pool.run { () throws(Errno) in 3 } == 3, "the pool serves again once the source answers")
    }

    /// Polls `condition` for up to 5 s.
    private func eventually(_ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while !condition() && Date() < deadline { usleep(2_000) }
        return condition()
    }

    @Test("Opening a file whose open never completes (a FIFO without a writer) is EIO after the timeout")
    func openStallsTimeOut() throws {
        let source = try SourceFixture(sourceCallTimeout: .milliseconds(300))
        #expect(mkfifo(source.path("pipe"), 0o644) == 0)
        let node = try source.lookup("pipe")
        #expect(throws: Errno.ioError) { _ = try source.filesystem.open(node: node, flags: O_RDONLY) }
        #expect(source.filesystem.figures[.sourceTimeouts] == 1)
        // Unblock the stalled open so its thread can finish.
        let writer = open(source.path("pipe"), O_WRONLY | O_NONBLOCK)
        if writer >= 0 { close(writer) }
        try source.write("model", [1, 2, 3])
        let file = try source.filesystem.open(node: try source.lookup("model"), flags: O_RDONLY)
        #expect(try source.read(file, at: 0, count: 10) == [1, 2, 3])
    }
}
