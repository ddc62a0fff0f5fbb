import CFuse
import Logging
import Reporting
import Synchronization
import SystemPackage

/// The FUSE operations cachefs answers, named as in libfuse's operations table: how a failed
/// request is named in the log and in the `failedOperations` figure.
enum FuseOperation: String, CaseIterable, Sendable {
    case lookup, getattr, readlink, open, read, opendir, readdir, readdirplus, statfs, getxattr, listxattr, access
    case setattr, mknod, mkdir, unlink, rmdir, symlink, rename, link, write, create, setxattr, removexattr, fallocate
    case copyFileRange = "copy_file_range"
}

/// Requests answered with an error, counted per operation in relaxed atomics (a request's
/// thread adds one; a report reads them all).
final class OperationFailures: Sendable {
    private final class Count: Sendable {
        let value = Atomic<UInt64>(0)
    }

    private let counts = FuseOperation.allCases.map { _ in Count() }

    func count(_ operation: FuseOperation) {
        counts[FuseOperation.allCases.firstIndex(of: operation)!].value.add(1, ordering: .relaxed)
    }

    /// Each operation's failures, zeros included (a series that exists from the start, as Prometheus advises).
    var byOperation: [String: UInt64] {
        Dictionary(uniqueKeysWithValues: zip(FuseOperation.allCases, counts).map { ($0.rawValue, $1.value.load(ordering: .relaxed)) })
    }
}

extension FuseServer: FigureReporter {
    public func report(into figures: inout FigureValues) {
        figures[labelled: .failedOperations] = failures.byOperation
    }

    /// Answers a request with an error: counted for its operation, and logged at debug level with
    /// the node it named, the errno and its meaning (a lookup of a missing name is an answer, not a fault).
    func fail(_ req: fuse_req_t?, _ operation: FuseOperation, node: UInt64, _ error: Errno) {
        failures.count(operation)
        logger.debug(
            "request failed",
            metadata: [
                "operation": "\(operation.rawValue)", "node": "\(node)", "errno": "\(error.rawValue)", "cause": "\(error)",
            ])
        fuse_reply_err(req, error.rawValue)
    }
}
