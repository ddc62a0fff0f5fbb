import HTTPServing
import Synchronization
import TestSupport
import Testing

@testable import PeerTransport

@Suite struct RendezvousTests {
    let peers = (1...5).map { PeerAddress(host: "10.0.0.\($0)", port: 7070) }

    let file = PeerFile(
        path: Array("models/m.safetensors".utf8), size: 1 << 40, modifiedNanoseconds: 1_700_000_000_000_000_000, blockSize: 1 << 20)

    func rank(_ instances: [PeerAddress], _ stripe: Int64) -> [PeerAddress] { Rendezvous.rank(instances, file: file, stripe: stripe) }

    @Test func rankingIsDeterministicAndIndependentOfListOrder() {
        var shuffled = peers
        var generator = SplitMix64(seed: 7)
        for index in Int64(0)..<200 {
            shuffled.shuffle(using: &generator)
            let ranked = rank(peers, index)
            #expect(rank(shuffled, index) == ranked)
            #expect(Set(ranked) == Set(peers))
        }
        // Another version of the file is another file, ranked on its own.
        var other = file
        other.modifiedNanoseconds = 1
        #expect(Rendezvous.hash(of: other, stripe: 0) != Rendezvous.hash(of: file, stripe: 0))
        // A stripe is 4 MiB of blocks: one owner for a prefetch chunk.
        #expect(Rendezvous.stripeBlocks(blockSize: 1 << 20) == 4 && Rendezvous.stripeBlocks(blockSize: 8 << 20) == 1)
        #expect(Rendezvous.stripe(of: 7, blockSize: 1 << 20) == 1)
    }

    @Test func hashDoesNotDependOnTheProcess() {
        // FNV-1a's published test vector: "a" → 0xaf63dc4c8601ec8c; our hash appends a 0xFF separator.
        var expected: UInt64 = 0xAF63_DC4C_8601_EC8C
        expected ^= 0xFF
        expected &*= 0x0000_0100_0000_01B3
        var hash = FNV1a()
        hash.add(Array("a".utf8))
        #expect(hash.value == expected)
    }

    @Test func blocksSpreadEvenly() {
        var firsts: [PeerAddress: Int] = [:]
        let blocks = 20_000
        for index in 0..<blocks { firsts[rank(peers, Int64(index))[0], default: 0] += 1 }
        let fair = blocks / peers.count
        for peer in peers {
            let share = firsts[peer, default: 0]
            #expect(abs(share - fair) < fair / 10, "\(peer) ranks first for \(share) of \(blocks) stripes")
        }
    }

    /// Owners are balanced: with 4 instances and 256 stripes, plain rendezvous gives the busiest instance
    /// more stripes than the bounded owners, which keep every one within 5% (and a stripe) of its share,
    /// and every instance works out the same owners whatever the order of its list.
    @Test func ownersAreBalancedAndAgreed() {
        let instances = Array(peers.prefix(4))
        let big = PeerFile(path: file.path, size: 1 << 30, modifiedNanoseconds: file.modifiedNanoseconds, blockSize: 1 << 20)
        let owners = Rendezvous.owners(of: big, among: instances)
        #expect(owners.count == 256)
        #expect(Rendezvous.owners(of: big, among: instances.reversed()) == owners)
        let counts = Dictionary(grouping: owners, by: { $0 }).mapValues(\.count)
        #expect(Set(counts.keys) == Set(instances))
        #expect(counts.values.max()! <= Int((1.05 * 256 / 4).rounded(.up)), "\(counts)")
        let plain = Dictionary(grouping: (0..<256).map { rank(instances, Int64($0))[0] }, by: { $0 }).mapValues(\.count)
        #expect(plain.values.max()! > counts.values.max()!, "plain rendezvous is less even here: \(plain)")
        // Every stretch from the file's start is balanced too: a fleet reading the file in order keeps every
        // owner's link as busy as the others all along, not only at the end.
        var seen: [PeerAddress: Int] = [:]
        for (stripe, owner) in owners.enumerated() {
            seen[owner, default: 0] += 1
            #expect(seen[owner]! <= Int((1.05 * Double(stripe + 1) / 4).rounded(.up)), "stripe \(stripe)")
        }
    }

    @Test func removingAPeerMovesOnlyItsBlocks() {
        let gone = peers[2]
        let remaining = peers.filter { $0 != gone }
        var moved = 0
        for index in Int64(0)..<5_000 {
            let before = rank(peers, index)
            let after = rank(remaining, index)
            if before[0] == gone {
                moved += 1
                #expect(after[0] == before[1], "its blocks go to their second choice")
            } else {
                #expect(after[0] == before[0], "other peers keep their blocks")
            }
            #expect(after == before.filter { $0 != gone }, "the order of the rest is unchanged")
        }
        #expect(moved > 0)
    }
}

@Suite struct PeerHealthTests {
    final class FakeClock: Sendable {
        let now = Mutex(ContinuousClock.now)
        func advance(_ duration: Duration) { now.withLock { $0 += duration } }
    }

    @Test func failingPeerIsSkippedThenRetried() {
        let clock = FakeClock()
        let health = PeerHealth(backoff: .seconds(10), maximumBackoff: .seconds(60), clock: { clock.now.withLock { $0 } })
        let peer = PeerAddress(host: "10.0.0.1", port: 7070), other = PeerAddress(host: "10.0.0.2", port: 7070)
        #expect(health.isAvailable(peer))
        health.recordFailure(peer)
        #expect(!health.isAvailable(peer))
        #expect(health.isAvailable(other), "only the failing peer is skipped")
        #expect(health.skippedCount == 1)
        clock.advance(.seconds(9))
        #expect(!health.isAvailable(peer))
        clock.advance(.seconds(1))
        #expect(health.isAvailable(peer), "retried after the backoff")

        health.recordFailure(peer) // failed again on retry: a longer pause
        clock.advance(.seconds(19))
        #expect(!health.isAvailable(peer))
        clock.advance(.seconds(1))
        #expect(health.isAvailable(peer))
        for _ in 0..<10 { health.recordFailure(peer) }
        clock.advance(.seconds(60))
        #expect(health.isAvailable(peer), "the pause is capped")

        health.recordFailure(peer)
        health.recordSuccess(peer)
        #expect(health.isAvailable(peer), "a success clears the backoff")
        health.recordFailure(peer)
        clock.advance(.seconds(10))
        #expect(health.isAvailable(peer), "and the next failure starts from the base pause")
    }
}
