/// The cache-listing part of the control API (`cachefs ls`), as JSON bodies:
///
///     POST /list   ListRequest -> ListAnswer   what this instance's memory holds of the files under the paths
///
/// The daemon answers from the source's attributes and the cache's index: no file is opened or
/// read, nothing is loaded, and no block moves in the LRU order. Paths in the daemon's answer
/// are relative to the mountpoint; `cachefs ls` shows them beneath it (`rebased`).
public struct ListRequest: Codable, Sendable {
    public var paths: [String]

    public init(paths: [String]) { self.paths = paths }
}

/// The daemon's answer: the files column by column (an array of numbers decodes several times
/// faster than an object a file, which matters at tens of thousands of files), and the directories walked.
public struct ListAnswer: Codable, Sendable, Equatable {
    public var paths: [String] = []
    public var sizes: [Int64] = []
    public var cachedBytes: [Int64] = []
    public var pinned: [Bool] = []
    public var held: [Bool] = []
    /// Null where no block of the file is in memory.
    public var lastRead: [Int64?] = []
    public var directories: [String] = []

    public init() {}

    public mutating func append(_ file: Listing.File) {
        paths.append(file.path)
        sizes.append(file.size)
        cachedBytes.append(file.cachedBytes)
        pinned.append(file.pinned)
        held.append(file.held)
        lastRead.append(file.lastRead)
    }

    /// The listing with each directory's totals; nil if the columns do not line up.
    public var listing: Listing? {
        let count = paths.count
        guard [sizes.count, cachedBytes.count, pinned.count, held.count, lastRead.count].allSatisfy({ $0 == count }) else { return nil }
        let files = (0..<count).map { index in
            Listing.File(
                path: paths[index], size: sizes[index], cachedBytes: cachedBytes[index],
                pinned: pinned[index], held: held[index], lastRead: lastRead[index])
        }
        return Listing(files: files, directories: directories)
    }
}

public struct Listing: Codable, Sendable, Equatable {
    public struct File: Codable, Sendable, Equatable {
        public var path: String
        public var size: Int64
        /// Bytes of this version of the file in memory.
        public var cachedBytes: Int64
        public var pinned: Bool
        /// Held in memory for readers the kernel serves itself (FUSE passthrough).
        public var held: Bool
        /// When a block of it in memory was last used (seconds since the Unix epoch); absent with none in memory.
        public var lastRead: Int64?

        public init(path: String, size: Int64, cachedBytes: Int64, pinned: Bool, held: Bool, lastRead: Int64?) {
            self.path = path
            self.size = size
            self.cachedBytes = cachedBytes
            self.pinned = pinned
            self.held = held
            self.lastRead = lastRead
        }
    }

    /// The totals of every file beneath a directory.
    public struct Directory: Codable, Sendable, Equatable {
        public var path: String
        public var files: Int
        public var size: Int64
        public var cachedBytes: Int64
        public var pinnedFiles: Int
        public var heldFiles: Int
        /// The latest `lastRead` of the files beneath it; absent if none has a block in memory.
        public var lastRead: Int64?

        mutating func add(files: Int, size: Int64, cachedBytes: Int64, pinned: Int, held: Int, lastRead: Int64?) {
            self.files += files
            self.size += size
            self.cachedBytes += cachedBytes
            pinnedFiles += pinned
            heldFiles += held
            if let lastRead { self.lastRead = max(self.lastRead ?? lastRead, lastRead) }
        }
    }

    /// Sorted by path.
    public var files: [File]
    /// Each directory listed and each beneath it, with its totals, sorted by path.
    public var directories: [Directory]

    /// Totals every directory in `directories` (relative paths, "" for the root) from the files beneath it.
    public init(files: [File], directories: [String]) {
        self.files = files.sorted { $0.path < $1.path }
        // Each file counts toward its own directory first; those sums then go to every listed ancestor.
        var direct: [Substring: Directory] = [:]
        for file in self.files {
            let parent = file.path.lastIndex(of: "/").map { file.path[..<$0] } ?? ""
            direct[
                parent,
                default: Directory(path: String(parent), files: 0, size: 0, cachedBytes: 0, pinnedFiles: 0, heldFiles: 0, lastRead: nil)
            ]
            .add(
                files: 1, size: file.size, cachedBytes: file.cachedBytes, pinned: file.pinned ? 1 : 0, held: file.held ? 1 : 0,
                lastRead: file.lastRead)
        }
        var totals = Dictionary(
            uniqueKeysWithValues: directories.map {
                ($0, Directory(path: $0, files: 0, size: 0, cachedBytes: 0, pinnedFiles: 0, heldFiles: 0, lastRead: nil))
            })
        for sum in direct.values {
            var ancestor = Substring(sum.path)
            while true {
                totals[String(ancestor)]?.add(
                    files: sum.files, size: sum.size, cachedBytes: sum.cachedBytes, pinned: sum.pinnedFiles,
                    held: sum.heldFiles, lastRead: sum.lastRead)
                guard !ancestor.isEmpty else { break }
                ancestor = ancestor.lastIndex(of: "/").map { ancestor[..<$0] } ?? ""
            }
        }
        self.directories = totals.values.sorted { $0.path < $1.path }
    }

    /// The same listing with every path beneath `mountpoint`, as the user named them.
    public func rebased(onto mountpoint: String) -> Listing {
        func beneath(_ path: String) -> String {
            path.isEmpty ? mountpoint : (mountpoint == "/" ? "/" : mountpoint + "/") + path
        }
        var copy = self
        for index in copy.files.indices { copy.files[index].path = beneath(copy.files[index].path) }
        for index in copy.directories.indices { copy.directories[index].path = beneath(copy.directories[index].path) }
        return copy
    }

    /// Several listings (of several mounts) as one, sorted by path.
    public static func merged(_ listings: [Listing]) -> Listing {
        var merged = Listing(files: [], directories: [])
        merged.files = listings.flatMap(\.files).sorted { $0.path < $1.path }
        merged.directories = listings.flatMap(\.directories).sorted { $0.path < $1.path }
        return merged
    }
}
