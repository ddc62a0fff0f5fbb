import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Runs a system call that returns -1 and sets errno on failure, retrying on EINTR.
@inline(__always)
func syscall<Result: FixedWidthInteger>(_ call: () -> Result) throws(Errno) -> Result {
    while true {
        let result = call()
        if result != -1 { return result }
        if errno != EINTR { throw Errno(rawValue: errno) }
    }
}

extension FileDescriptor {
    /// Reads until `buffer` is full or the file ends, from `offset`. Returns the bytes read.
    public func readFully(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws(Errno) -> Int {
        var done = 0
        while done < buffer.count {
            let count = try syscall {
                Glibc.pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if count == 0 { break }
            done += count
        }
        return done
    }
}

extension FileDescriptor {
    public func attributes() throws(Errno) -> Glibc.stat {
        var attributes = Glibc.stat()
        _ = try syscall { Glibc.fstat(rawValue, &attributes) }
        return attributes
    }
}

// Linux ABI values that Glibc's module hides behind _GNU_SOURCE.
// swift-format-ignore: AlwaysUseLowerCamelCase
let O_PATH: Int32 = 0o10000000
// swift-format-ignore: AlwaysUseLowerCamelCase
let AT_EMPTY_PATH: Int32 = 0x1000
