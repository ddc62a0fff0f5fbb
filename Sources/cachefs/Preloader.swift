import BlockCache
import Foundation
import Logging
import MirrorFS

/// `--preload GLOB`: warms the matching source files once the mount is ready, one file
/// after another, pinning them first with `--preload-pin` (run by `PreloadService`).
///
/// Threads: runs on a thread of its own; it blocks on source I/O like a reader.
enum Preloader {
    /// - Parameter stop: asked between files; true ends the preload (the daemon is shutting down).
    static func run(patterns: [String], pin: Bool, filesystem: MirrorFilesystem, logger: Logger, stop: () -> Bool) {
        let begun = ContinuousClock.now
        let files: [WarmFile]
        do {
            files = try filesystem.files(matching: patterns)
        } catch {
            logger.error("preload: cannot list the source", metadata: ["patterns": "\(patterns)", "error": "\(error)"])
            return
        }
        if files.isEmpty {
            logger.warning("preload: no source file matches", metadata: ["patterns": "\(patterns)"])
            return
        }
        let total = files.reduce(0) { $0 + $1.size }
        if pin {
            do throws(PinRefused) {
                try filesystem.pin(files)
            } catch {
                logger.error("preload: not pinned", metadata: ["reason": "\(DaemonControl.explain(error, fileCount: files.count))"])
            }
        }
        logger.info(
            "preload: starting", metadata: ["files": "\(files.count)", "bytes": "\(ByteCount.format(Int(total)))", "pin": "\(pin)"])
        var loaded: Int64 = 0
        for file in files {
            if stop() {
                logger.info("preload: stopped, the daemon is shutting down")
                return
            }
            do {
                loaded += try filesystem.warm(relativePath: file.path, offset: 0, length: file.size).bytes
            } catch {
                logger.warning("preload: file skipped", metadata: ["path": "\(file.path)", "error": "\(error)"])
            }
        }
        let elapsed = ContinuousClock.now - begun
        logger.info(
            "preload: done",
            metadata: [
                "files": "\(files.count)", "bytes": "\(ByteCount.format(Int(loaded)))", "seconds": "\(elapsed)",
            ])
    }
}
