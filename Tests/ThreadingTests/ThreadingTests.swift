import Synchronization
import Testing
import Threading

#if canImport(Glibc)
import Glibc
#endif

@Suite("Owned threads and conditions")
struct ThreadingTests {
    @Test("A thread is listed as unjoined from its start until its owner joins it, under its own name")
    func unjoinedUntilJoined() throws {
        let release = Condition(false)
        let seenName = Mutex<String>("")
        let thread = OwnedThread(name: "test-owned") {
            var name = [CChar](repeating: 0, count: 32)
            let file = fopen("/proc/thread-self/comm", "r")
            if let file {
                _ = fgets(&name, 32, file)
                fclose(file)
            }
            let shown = name.prefix { $0 != 0 && $0 != 0x0A }.map { UInt8(bitPattern: $0) }
            seenName.withLock { $0 = String(decoding: shown, as: UTF8.self) }
            _ = release.waitUntilSet()
        }
        #expect(OwnedThread.unjoined.contains("test-owned"))
        #expect(!thread.join(until: .now + .milliseconds(50)), "the body has not returned yet")
        #expect(OwnedThread.unjoined.contains("test-owned"))
        release.set()
        #expect(thread.join(until: .now + .seconds(10)))
        #expect(!OwnedThread.unjoined.contains("test-owned"))
        #expect(seenName.withLock { $0 } == "test-owned", "the kernel knows the thread by its name")
    }

    @Test("A pool joins the threads that left as new ones start, and names those still running at its deadline")
    func poolJoinsAndReportsStuck() throws {
        let pool = OwnedThreads()
        let ran = Condition(false)
        pool.start(name: "test-quick") { ran.set() }
        #expect(ran.waitUntilSet(until: .now + .seconds(10)))
        usleep(50_000) // its body has returned by now
        #expect(pool.count == 1 && OwnedThread.unjoined.contains("test-quick"), "left, but not joined until the pool starts another")
        let stuck = Condition(false)
        pool.start(name: "test-pending") { _ = stuck.waitUntilSet() }
        #expect(!OwnedThread.unjoined.contains("test-quick"))
        #expect(pool.join(until: .now + .milliseconds(50)) == ["test-pending"])
        #expect(pool.count == 1)
        stuck.set()
        #expect(pool.join(until: .now + .seconds(10)).isEmpty)
        #expect(pool.count == 0 && !OwnedThread.unjoined.contains("test-pending"))
    }

    @Test("A wait ends when the state is updated to what it waits for, or at its deadline")
    func conditionWakesAndTimesOut() throws {
        let value = Condition(0)
        let began = ContinuousClock.now
        #expect(value.wait(until: .now + .milliseconds(100)) { $0 == 1 ? true : nil } == nil)
        #expect(ContinuousClock.now - began >= .milliseconds(100))
        let setter = OwnedThread(name: "test-setter") {
            usleep(50_000)
            value.update { $0 = 1 }
        }
        #expect(value.wait(until: .now + .seconds(10)) { $0 == 1 ? $0 : nil } == 1)
        setter.join()
    }
}
