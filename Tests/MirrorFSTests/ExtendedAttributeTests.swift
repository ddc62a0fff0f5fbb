import CLinux
import Foundation
import MirrorFS
import Synchronization
import SystemPackage
import Testing

@testable import SourceTree

#if canImport(Glibc)
import Glibc
#endif

@Suite("Mirror: extended attributes", .enabled(if: userExtendedAttributesSupported(), "the temporary directory takes no user xattrs"))
struct ExtendedAttributeTests {
    private func setAttribute(_ fixture: SourceFixture, _ file: String, _ name: String, _ value: [UInt8]) throws {
        let result = value.withUnsafeBytes { setxattr(fixture.path(file), name, $0.baseAddress, $0.count, 0) }
        guard result == 0 else { throw Errno(rawValue: errno) }
    }

    /// Asks for the size with an empty buffer, then reads the value into a buffer of that size.
    private func attribute(_ fixture: SourceFixture, of node: UInt64, _ name: String) throws -> [UInt8] {
        try name.withCString { name in
            let size = try fixture.filesystem.extendedAttribute(
                of: node, named: name, into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
            var value = [UInt8](repeating: 0, count: size)
            let count = try value.withUnsafeMutableBytes { try fixture.filesystem.extendedAttribute(of: node, named: name, into: $0) }
            #expect(count == size)
            return value
        }
    }

    private func names(_ fixture: SourceFixture, of node: UInt64) throws -> [String] {
        let size = try fixture.filesystem.extendedAttributeNames(of: node, into: UnsafeMutableRawBufferPointer(start: nil, count: 0))
        var list = [UInt8](repeating: 0, count: size)
        let count = try list.withUnsafeMutableBytes { try fixture.filesystem.extendedAttributeNames(of: node, into: $0) }
        #expect(count == size)
        return list.prefix(count).split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("Values and names of a source file's attributes come through: size query, then the value")
    func fileAttributes() throws {
        let fixture = try SourceFixture()
        try fixture.write("model", [1, 2, 3])
        let text = Array("sha256:0123456789abcdef".utf8)
        let binary: [UInt8] = [0, 255, 0, 7, 0]
        try setAttribute(fixture, "model", "user.cachefs.digest", text)
        try setAttribute(fixture, "model", "user.cachefs.binary", binary)
        try setAttribute(fixture, "model", "user.cachefs.empty", [])
        let node = try fixture.lookup("model")

        #expect(try attribute(fixture, of: node, "user.cachefs.digest") == text)
        #expect(try attribute(fixture, of: node, "user.cachefs.binary") == binary)
        #expect(try attribute(fixture, of: node, "user.cachefs.empty") == [])
        let listed = try names(fixture, of: node)
        #expect(Set(listed).isSuperset(of: ["user.cachefs.digest", "user.cachefs.binary", "user.cachefs.empty"]))

        #expect(throws: Errno.noData) { _ = try attribute(fixture, of: node, "user.cachefs.absent") }
        // A buffer too small for the value is ERANGE, as from getxattr(2).
        #expect(throws: Errno.outOfRange) {
            var small = [UInt8](repeating: 0, count: 4)
            _ = try "user.cachefs.digest".withCString { name in
                try small.withUnsafeMutableBytes { try fixture.filesystem.extendedAttribute(of: node, named: name, into: $0) }
            }
        }
        #expect(throws: Errno.outOfRange) {
            var small = [UInt8](repeating: 0, count: 3)
            _ = try small.withUnsafeMutableBytes { try fixture.filesystem.extendedAttributeNames(of: node, into: $0) }
        }
    }

    @Test("Directories carry attributes; symlinks report none instead of their target's")
    func directoriesAndSymlinks() throws {
        let fixture = try SourceFixture()
        try fixture.makeDirectory("dir")
        try setAttribute(fixture, "dir", "user.cachefs.kind", Array("dataset".utf8))
        try fixture.write("target", [1])
        try setAttribute(fixture, "target", "user.cachefs.kind", Array("file".utf8))
        try fixture.symlink("link", to: "target")

        #expect(try attribute(fixture, of: try fixture.lookup("dir"), "user.cachefs.kind") == Array("dataset".utf8))
        let link = try fixture.lookup("link")
        #expect(throws: Errno.noData, "the symlink's target's attribute leaked through") {
            _ = try attribute(fixture, of: link, "user.cachefs.kind")
        }
        #expect(try names(fixture, of: link).isEmpty)
    }

    /// Looks files up while descriptors are held open, so that their source descriptors'
    /// numbers cross 10, 100 and (where the limit allows) 1000: the attribute calls name
    /// the descriptor by its decimal number under /proc/self/fd.
    private func checkDescriptorWidths() throws {
        let fixture = try SourceFixture()
        var limit = rlimit()
        let widest = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 && limit.rlim_cur > 1_500 ? 1_000 : 100
        var filler: [Int32] = []
        defer { for fd in filler { close(fd) } }
        var index = 0
        for boundary in [10, 100, 1_000] where boundary <= widest {
            while (filler.last ?? -1) < boundary - 3 {
                let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw Errno(rawValue: errno) }
                filler.append(fd)
            }
            for _ in 0..<4 {
                let name = "file\(index)"
                index += 1
                let value = Array("the value of \(name)".utf8)
                try fixture.write(name, [1])
                try setAttribute(fixture, name, "user.cachefs.which", value)
                let node = try fixture.lookup(name)
                #expect(try attribute(fixture, of: node, "user.cachefs.which") == value, "\(name)")
                #expect(try names(fixture, of: node).contains("user.cachefs.which"), "\(name)")
                #expect(throws: Errno.noData) { _ = try attribute(fixture, of: node, "user.cachefs.absent") }
            }
        }
    }

    @Test("Attributes come through whatever the width of the source descriptor's number")
    func descriptorNumberWidths() throws {
        try checkDescriptorWidths()
    }

    @Test("Without getxattrat and listxattrat (kernels before 6.13), the /proc path gives the same answers")
    func withoutRelativeCalls() throws {
        // Other tests running meanwhile take the same path; it gives them the same answers too.
        ProcSelfFD.relativeCallsMissing.store(true, ordering: .relaxed)
        defer { ProcSelfFD.relativeCallsMissing.store(false, ordering: .relaxed) }
        try checkDescriptorWidths()
        try fileAttributes()
        try directoriesAndSymlinks()
    }
}
