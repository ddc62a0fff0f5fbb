import ArgumentParser
import ControlPlane
import Foundation

#if canImport(Glibc)
import Glibc
#endif

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "Show which files under a cachefs mount are in its memory, and how much of each.",
        discussion: """
            Per file: its size, the bytes of it in this instance's memory and their share, whether it is pinned \
            or held for readers the kernel serves from memory (passthrough), and when a block of it was last used; \
            each directory gets a line with its totals. The daemon answers from its index: no file is read, \
            nothing is loaded, and the order in which blocks are evicted does not change.
            Examples:
              cachefs ls /data-fast/models
              cachefs ls /data-fast/models/Lora --json
            """
    )

    @Argument(help: "Files or directories inside a cachefs mount.")
    var paths: [String]

    @Flag(help: "Print JSON, for scripts (lastRead in seconds since the Unix epoch).")
    var json = false

    @Option(help: "The daemon's control socket, if it was started with --control-socket.")
    var controlSocket: String?

    func run() throws {
        var listings: [Listing] = []
        for group in try MountLocator.group(paths) {
            let client = ControlClient(socketPath: MountLocator.controlSocket(for: group.mountpoint, explicit: controlSocket))
            let request = ListRequest(paths: group.relativePaths)
            listings.append(try runBlocking { try await client.list(request) }.rebased(onto: group.mountpoint))
        }
        let listing = listings.count == 1 ? listings[0] : Listing.merged(listings)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try encoder.encode(listing) + Data("\n".utf8))
        } else {
            FileHandle.standardOutput.write(Data(Self.table(listing, now: Int64(time(nil))).utf8))
        }
    }

    /// One line a file, and after the files beneath a directory its total line, in path order:
    ///
    ///         size   cached     %  flags   last read  path
    ///      4.8 MiB  4.8 MiB  100%  pinned  5 s ago    /data-fast/a.bin
    ///      9.6 MiB  4.8 MiB   50%  -       -          /data-fast/ (2 files)
    static func table(_ listing: Listing, now: Int64) -> String {
        var rows: [[String]] = [["size", "cached", "%", "flags", "last read", "path"]]
        rows.reserveCapacity(listing.files.count + listing.directories.count + 1)
        func row(size: Int64, cached: Int64, flags: String, lastRead: Int64?, path: String) -> [String] {
            [
                ByteCount.format(Int(size)), ByteCount.format(Int(cached)), percent(cached, of: size), flags,
                lastRead.map { age(now - $0) } ?? "-", path,
            ]
        }
        // Files and directories in one walk: a directory's line opens before the first path beneath it
        // (its key is its path with a slash) and is written once a path outside it comes, like du's.
        var open: [Listing.Directory] = []
        func closeDirectories(notHolding path: String?) {
            while let innermost = open.last, path.map({ !$0.hasPrefix(directoryKey(innermost.path)) }) ?? true {
                open.removeLast()
                let flags = [
                    innermost.pinnedFiles > 0 ? "\(innermost.pinnedFiles) pinned" : nil,
                    innermost.heldFiles > 0 ? "\(innermost.heldFiles) held" : nil,
                ].compactMap { $0 }
                rows.append(
                    row(
                        size: innermost.size, cached: innermost.cachedBytes, flags: flags.isEmpty ? "-" : flags.joined(separator: ", "),
                        lastRead: innermost.lastRead,
                        path: directoryKey(innermost.path) + " (\(innermost.files) file\(innermost.files == 1 ? "" : "s"))"))
            }
        }
        var directories = listing.directories.map { (key: directoryKey($0.path), directory: $0) }.sorted { $0.key < $1.key }
            .map(\.directory).makeIterator()
        var nextDirectory = directories.next()
        for file in listing.files {
            while let directory = nextDirectory, directoryKey(directory.path) <= file.path {
                closeDirectories(notHolding: directory.path)
                open.append(directory)
                nextDirectory = directories.next()
            }
            closeDirectories(notHolding: file.path)
            let flags = [file.pinned ? "pinned" : nil, file.held ? "held" : nil].compactMap { $0 }
            rows.append(
                row(
                    size: file.size, cached: file.cachedBytes, flags: flags.isEmpty ? "-" : flags.joined(separator: ","),
                    lastRead: file.lastRead, path: file.path))
        }
        while let directory = nextDirectory {
            closeDirectories(notHolding: directory.path)
            open.append(directory)
            nextDirectory = directories.next()
        }
        closeDirectories(notHolding: nil)
        return aligned(rows, rightAligned: [true, true, true, false, false, false])
    }

    /// A directory's path with one trailing slash: every path beneath it starts with it.
    private static func directoryKey(_ path: String) -> String {
        path.hasSuffix("/") ? path : path + "/"
    }

    /// The share in whole percent, rounded down so that only a whole file shows 100%.
    static func percent(_ part: Int64, of whole: Int64) -> String {
        whole == 0 ? "-" : "\(part >= whole ? 100 : part * 100 / whole)%"
    }

    /// "12 s ago", "3 min ago", "5 h ago", "2 d ago".
    static func age(_ seconds: Int64) -> String {
        let seconds = max(0, seconds)
        switch seconds {
        case ..<60: return "\(seconds) s ago"
        case ..<3600: return "\(seconds / 60) min ago"
        case ..<(2 * 86400): return "\(seconds / 3600) h ago"
        default: return "\(seconds / 86400) d ago"
        }
    }

    /// Columns padded to their widest cell, two spaces apart; the last column is not padded.
    private static func aligned(_ rows: [[String]], rightAligned: [Bool]) -> String {
        let columns = rightAligned.count
        var widths = [Int](repeating: 0, count: columns)
        // The padded columns are ASCII, so bytes are characters.
        for row in rows { for index in 0..<(columns - 1) { widths[index] = max(widths[index], row[index].utf8.count) } }
        var text = ""
        for row in rows {
            for (index, cell) in row.enumerated() {
                if index == columns - 1 {
                    text += cell
                    break
                }
                let padding = String(repeating: " ", count: widths[index] - cell.utf8.count)
                text += rightAligned[index] ? padding + cell + "  " : cell + padding + "  "
            }
            text += "\n"
        }
        return text
    }
}
