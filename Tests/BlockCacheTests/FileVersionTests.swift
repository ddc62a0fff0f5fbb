import BlockCache
import Testing

@Suite("File versions")
struct FileVersionTests {
    @Test(
        "A time prints with nine digits of nanoseconds, as stat does",
        arguments: [
            (Timestamp(seconds: 1, nanoseconds: 5), "1.000000005"),
            (Timestamp(seconds: 1, nanoseconds: 500_000_000), "1.500000000"),
            (Timestamp(seconds: 1_700_000_000, nanoseconds: 123_456_789), "1700000000.123456789"),
            (Timestamp(seconds: 0, nanoseconds: 0), "0.000000000"),
        ])
    func timestampDescription(time: Timestamp, shown: String) {
        #expect(time.description == shown)
    }
}
