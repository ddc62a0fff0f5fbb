import CLinux
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A reference to one file in the source tree: an `O_PATH` descriptor, which
/// pins the file (not its name) without opening it for I/O.
///
/// Operations go through the descriptor, never through a path string, so a
/// mount on top of the source, a rename in it, or a name with any bytes cannot
/// redirect them. The descriptor is closed when the handle is released.
public final class PathHandle: Sendable {
    public let descriptor: FileDescriptor
    public let isSymbolicLink: Bool

    private init(descriptor: FileDescriptor, isSymbolicLink: Bool) {
        self.descriptor = descriptor
        self.isSymbolicLink = isSymbolicLink
    }

    deinit { try? descriptor.close() }

    /// Opens the source root, which must be a directory.
    public static func openRoot(_ path: String) throws(Errno) -> PathHandle {
        let fd = try syscall { open(path, O_PATH | O_DIRECTORY | O_CLOEXEC) }
        return PathHandle(descriptor: FileDescriptor(rawValue: fd), isSymbolicLink: false)
    }

    /// Looks up `name` in this directory without following a final symlink.
    /// - Parameter name: a NUL-terminated name, valid for the duration of the call.
    public func child(named name: UnsafePointer<CChar>) throws(Errno) -> (handle: PathHandle, attributes: stat) {
        let fd = try syscall { openat(descriptor.rawValue, name, O_PATH | O_NOFOLLOW | O_CLOEXEC) }
        var attributes = stat()
        guard fstatat(fd, "", &attributes, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0 else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        let isSymbolicLink = (attributes.st_mode & S_IFMT) == S_IFLNK
        return (PathHandle(descriptor: FileDescriptor(rawValue: fd), isSymbolicLink: isSymbolicLink), attributes)
    }

    /// The attributes of the entry `name` in this directory, without opening it: one source
    /// call where `child(named:)` makes three (open, stat, and later close).
    public func childAttributes(named name: UnsafePointer<CChar>) throws(Errno) -> stat {
        var attributes = stat()
        guard fstatat(descriptor.rawValue, name, &attributes, AT_SYMLINK_NOFOLLOW) == 0 else { throw Errno(rawValue: errno) }
        return attributes
    }

    /// Resolves a path relative to this directory that must stay beneath it:
    /// no `..` above it, no absolute path, no symlink on the way (`ELOOP`, `EXDEV`).
    ///
    /// This is how requests naming a file by path (warm-up, peers) reach the
    /// source; the kernel enforces the confinement (openat2 `RESOLVE_BENEATH`).
    public func descendant(atRelativePath path: String) throws(Errno) -> (handle: PathHandle, attributes: stat) {
        try descendant(atRelativePath: Array(path.utf8))
    }

    /// The same, for a path as raw bytes (names need not be UTF-8).
    public func descendant(atRelativePath path: [UInt8]) throws(Errno) -> (handle: PathHandle, attributes: stat) {
        guard path.first != UInt8(ascii: "/"), !path.contains(0) else { throw Errno.invalidArgument }
        let resolve = CACHEFS_RESOLVE_BENEATH | CACHEFS_RESOLVE_NO_SYMLINKS | CACHEFS_RESOLVE_NO_MAGICLINKS
        let terminated = (path.isEmpty ? [UInt8(ascii: ".")] : path) + [0]
        let fd = try syscall {
            terminated.withUnsafeBufferPointer { bytes in
                bytes.withMemoryRebound(to: CChar.self) {
                    cachefs_openat2(descriptor.rawValue, $0.baseAddress!, UInt64(O_PATH | O_CLOEXEC | O_NOFOLLOW), resolve)
                }
            }
        }
        let handle = PathHandle(descriptor: FileDescriptor(rawValue: fd), isSymbolicLink: false)
        let attributes = try handle.attributes()
        // O_PATH | O_NOFOLLOW opens a final symlink itself rather than failing.
        guard (attributes.st_mode & S_IFMT) != S_IFLNK else { throw Errno.tooManySymbolicLinkLevels }
        return (handle, attributes)
    }

    public func attributes() throws(Errno) -> stat {
        var attributes = stat()
        _ = try syscall { fstatat(descriptor.rawValue, "", &attributes, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) }
        return attributes
    }

    /// Opens the file itself for reading (a new open file description each time); with
    /// `bypassingPageCache`, O_DIRECT where the file system takes it (else a plain open).
    public func openForReading(bypassingPageCache: Bool = false) throws(Errno) -> FileDescriptor {
        if bypassingPageCache {
            do throws(Errno) {
                return FileDescriptor(rawValue: try syscall { open(procPath, O_RDONLY | O_CLOEXEC | CACHEFS_O_DIRECT) })
            } catch  where error == .invalidArgument {
                // A file system without direct I/O refuses the flag at open.
            }
        }
        return FileDescriptor(rawValue: try syscall { open(procPath, O_RDONLY | O_CLOEXEC) })
    }

    public func openDirectory() throws(Errno) -> DirectoryStream {
        let fd = try syscall { open(procPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard let stream = fdopendir(fd) else {
            let error = Errno(rawValue: errno)
            close(fd)
            throw error
        }
        return DirectoryStream(stream)
    }

    /// The target of a symbolic link, as raw bytes without a terminator.
    public func linkTarget() throws(Errno) -> [UInt8] {
        var capacity = Int(PATH_MAX)
        while true {
            var target = [UInt8](repeating: 0, count: capacity)
            let length = try syscall {
                target.withUnsafeMutableBytes {
                    readlinkat(descriptor.rawValue, "", $0.baseAddress!.assumingMemoryBound(to: CChar.self), capacity)
                }
            }
            if length < capacity { return Array(target[..<length]) }
            capacity *= 2
        }
    }

    /// statfs f_type of every FUSE file system.
    public static let fuseFileSystemType = 0x6573_5546

    /// The file system's magic number (statfs f_type): tells a FUSE mount from the directory beneath it.
    public func fileSystemType() throws(Errno) -> Int {
        var statistics = statfs()
        _ = try syscall { fstatfs(descriptor.rawValue, &statistics) }
        return Int(statistics.f_type)
    }

    public func fileSystemStatistics() throws(Errno) -> statvfs {
        var statistics = statvfs()
        _ = try syscall { fstatvfs(descriptor.rawValue, &statistics) }
        return statistics
    }

    /// Reads the named extended attribute into `buffer`; with an empty buffer, returns the value's size.
    public func extendedAttribute(named name: UnsafePointer<CChar>, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        // Symlinks carry no user attributes on Linux, and /proc would follow them.
        guard !isSymbolicLink else { throw Errno.noData }
        return try throughProc(
            relative: { directory, number in cachefs_getxattrat(directory, number, 0, name, buffer.baseAddress, buffer.count) },
            absolute: { path in getxattr(path, name, buffer.baseAddress, buffer.count) }
        )
    }

    /// Lists attribute names, NUL-separated, into `buffer`; with an empty buffer, returns the list's size.
    public func extendedAttributeNames(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard !isSymbolicLink else { return 0 }
        let list = buffer.baseAddress?.assumingMemoryBound(to: CChar.self)
        return try throughProc(
            relative: { directory, number in cachefs_listxattrat(directory, number, 0, list, buffer.count) },
            absolute: { path in listxattr(path, list, buffer.count) }
        )
    }

    /// The path through /proc that reopens this descriptor's file.
    private var procPath: String { "/proc/self/fd/\(descriptor.rawValue)" }

    /// Runs an attribute call on this file through its /proc/self/fd entry, which the kernel
    /// resolves to the file itself. `relative` names the entry by number relative to
    /// /proc/self/fd, opened once (the *xattrat calls of Linux 6.13); `absolute` walks
    /// /proc/self/fd/N from the root, which costs several microseconds more on every call:
    /// ls -l asks two attributes of every file, each a FUSE request that waits for this.
    /// Where the kernel (or a seccomp filter) lacks the relative calls, the absolute path
    /// serves from then on; both reach the same file and give the same answer.
    private func throughProc(
        relative: (_ directory: Int32, _ number: UnsafePointer<CChar>) -> Int,
        absolute: (_ path: UnsafePointer<CChar>) -> Int
    ) throws(Errno) -> Int {
        let fd = descriptor.rawValue
        return try syscall {
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: 32) { text in
                // "/proc/self/fd/" and the descriptor's number in decimal, NUL-terminated.
                let prefix: StaticString = "/proc/self/fd/"
                var end = prefix.utf8CodeUnitCount
                prefix.withUTF8Buffer { bytes in
                    for (index, byte) in bytes.enumerated() { text[index] = CChar(bitPattern: byte) }
                }
                var digits = 1
                var rest = Int(fd) / 10
                while rest > 0 { digits += 1; rest /= 10 }
                var value = Int(fd)
                for index in stride(from: end + digits - 1, through: end, by: -1) {
                    text[index] = CChar(48 + value % 10)
                    value /= 10
                }
                end += digits
                text[end] = 0
                let path = UnsafePointer(text.baseAddress!)
                let directory = ProcSelfFD.directory
                if directory >= 0 && !ProcSelfFD.relativeCallsMissing.load(ordering: .relaxed) {
                    let result = relative(directory, path + prefix.utf8CodeUnitCount)
                    if result != -1 || (errno != ENOSYS && errno != EPERM) { return result }
                    ProcSelfFD.relativeCallsMissing.store(true, ordering: .relaxed)
                }
                return absolute(path)
            }
        }
    }
}

/// /proc/self/fd of this process, open as a directory for the *xattrat calls (-1 if it cannot be opened).
enum ProcSelfFD {
    static let directory: Int32 = open("/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC)
    /// Set once a relative call failed with ENOSYS or EPERM: an older kernel, or a seccomp filter that refuses it.
    static let relativeCallsMissing = Atomic<Bool>(false)
}
