import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Puts the built binary on mount.fuse3's standard PATH as /usr/local/sbin/cachefs
/// for the duration of `body`, restoring whatever was there before, even on failure.
private func withCachefsOnStandardPath(_ body: () throws -> Void) throws {
    let link = "/usr/local/sbin/cachefs"
    let manager = FileManager.default
    let previous = try? manager.destinationOfSymbolicLink(atPath: link)
    let hadFile = previous == nil && manager.fileExists(atPath: link)
    let saved = link + ".saved-by-test-\(getpid())"
    if hadFile { try manager.moveItem(atPath: link, toPath: saved) } else if previous != nil { try manager.removeItem(atPath: link) }
    defer {
        try? manager.removeItem(atPath: link)
        if hadFile { try? manager.moveItem(atPath: saved, toPath: link) }
        if let previous { try? manager.createSymbolicLink(atPath: link, withDestinationPath: previous) }
    }
    try manager.createSymbolicLink(atPath: link, withDestinationPath: cachefsBinary)
    try body()
}

private func daemonPid(_ mountpoint: String) -> Int32? {
    guard let result = try? run(cachefsBinary, ["stats", mountpoint, "--json"], timeout: 30), result.status == 0,
        let object = try? JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]
    else { return nil }
    return (object["pid"] as? NSNumber)?.int32Value
}

@Suite("fstab and mount -t", .serialized)
struct FstabTests {
    @Test("mount -t fuse.cachefs SRC MNT -o capacity=64M works through mount.fuse3")
    func mountDashT() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        try shell("head -c 3000000 /dev/urandom > model.bin", in: source)
        try withCachefsOnStandardPath {
            let mounted = try run(
                "/bin/mount", ["-t", "fuse.cachefs", source, mountpoint, "-o", "capacity=64M,block_size=2M"], timeout: 60)
            let pid = daemonPid(mountpoint)
            defer { stopBackgroundDaemon(pid: pid, mountpoint: mountpoint) }
            #expect(mounted.status == 0, "\(mounted.error)")
            #expect(try run("/usr/bin/cmp", [source + "/model.bin", mountpoint + "/model.bin"]).status == 0)
            let table = try run(cachefsBinary, ["stats", mountpoint])
            #expect(statsRows(table.output)["capacity"] == "64 MiB" && statsRows(table.output)["blockSize"] == "2 MiB", "\(table.output)")
            #expect(try shell("grep ' \(mountpoint) ' /proc/mounts").contains("fuse.cachefs"))
            #expect(try run("/bin/umount", [mountpoint]).status == 0)
            #expect(pid != nil && eventually(within: 10) { kill(pid!, 0) != 0 }, "the daemon outlived umount")
        }
        #expect(!isMounted(mountpoint))
    }

    @Test("An fstab line mounts with mount -T FSTAB MNT")
    func fstabLine() throws {
        let scratch = try ScratchDirectory()
        let source = try scratch.make("src")
        let mountpoint = try scratch.make("mnt")
        try shell("echo 'from fstab' > hello.txt", in: source)
        let fstab = scratch.path + "/fstab"
        try "\(source) \(mountpoint) fuse.cachefs capacity=64M,allow_other,_netdev,nofail 0 0\n"
            .write(toFile: fstab, atomically: true, encoding: .utf8)
        try withCachefsOnStandardPath {
            let mounted = try run("/bin/mount", ["-T", fstab, mountpoint], timeout: 60)
            let pid = daemonPid(mountpoint)
            defer { stopBackgroundDaemon(pid: pid, mountpoint: mountpoint) }
            #expect(mounted.status == 0, "\(mounted.error)")
            #expect(try shell("cat \(mountpoint)/hello.txt") == "from fstab\n")
            #expect(try shell("grep ' \(mountpoint) ' /proc/mounts").contains("allow_other"))
        }
        #expect(!isMounted(mountpoint))
    }
}
