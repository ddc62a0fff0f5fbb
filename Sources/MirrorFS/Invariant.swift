import Logging

/// A broken invariant, which no input should be able to cause: it traps in debug builds, so tests
/// find it, and is logged as an error in release builds, where the daemon goes on serving.
func invariantBroken(_ message: String, logger: Logger, file: StaticString = #fileID, line: UInt = #line) {
    logger.error("broken invariant: \(message)", metadata: ["at": "\(file):\(line)"])
    assertionFailure(message, file: file, line: line)
}
