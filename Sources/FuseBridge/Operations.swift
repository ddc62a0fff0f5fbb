import BlockCache
import CFuse
import MirrorFS
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

// The low-level operations table: each callback finds the FuseServer through
// the request's user data, makes one MirrorFilesystem call, and replies.
// libfuse calls these from its worker threads, any number at once.
//
// Open files and directories travel through the kernel as `fi->fh`: a handle of
// MirrorFS's table made in open/opendir and released in release/releasedir, which the
// kernel calls exactly once per successful open (a handle, not a pointer, so that a
// daemon taking over from this one can answer the handles the kernel holds).

extension FuseServer {
    static let operations: fuse_lowlevel_ops = {
        var ops = fuse_lowlevel_ops()
        ops.`init` = { userData, connection in
            Unmanaged<FuseServer>.fromOpaque(userData!).takeUnretainedValue().negotiate(connection!)
        }
        ops.lookup = { req, parent, name in
            server(req).reply(req, .lookup, node: parent) { fs throws(Errno) in
                let (node, attributes) = try fs.filesystem.lookup(parent: parent, name: name!)
                var entry = fs.entry(node: node, attributes: attributes)
                fuse_reply_entry(req, &entry)
            }
        }
        ops.forget = { req, node, lookups in
            server(req).filesystem.forget(node: node, lookups: lookups)
            fuse_reply_none(req)
        }
        ops.forget_multi = { req, count, forgets in
            let fs = server(req).filesystem
            for item in UnsafeBufferPointer(start: forgets, count: count) {
                fs.forget(node: item.ino, lookups: item.nlookup)
            }
            fuse_reply_none(req)
        }
        ops.getattr = { req, node, _ in
            server(req).reply(req, .getattr, node: node) { fs throws(Errno) in
                var attributes = try fs.filesystem.attributes(of: node)
                fuse_reply_attr(req, &attributes, fs.configuration.metadataTimeout)
            }
        }
        ops.readlink = { req, node in
            server(req).reply(req, .readlink, node: node) { fs throws(Errno) in
                var target = try fs.filesystem.linkTarget(of: node)
                target.append(0)
                target.withUnsafeBufferPointer {
                    _ = fuse_reply_readlink(req, UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: CChar.self))
                }
            }
        }
        ops.open = { req, node, info in
            server(req).reply(req, .open, node: node) { fs throws(Errno) in
                let (file, fh) = try fs.filesystem.openHandle(node: node, flags: cachefs_file_info_flags(info))
                let replied: Int32
                if file.versionChanged, let session = fs.liveSession {
                    // The kernel may hold the old size; make it ask again. No dirty pages exist, so this never blocks.
                    fuse_lowlevel_notify_inval_inode(session, node, -1, 0)
                }
                switch file.mode {
                case .passthrough(let backingID):
                    // The kernel reads the file's memory itself from now on; keep_cache is not allowed with it.
                    replied = cachefs_reply_open_passthrough(req, fh, backingID)
                case .daemonServed(let keepCache, let directIO):
                    cachefs_file_info_set_keep_cache(info, keepCache ? 1 : 0)
                    cachefs_file_info_set_noflush(info)
                    if directIO { cachefs_file_info_set_direct_io(info) }
                    cachefs_file_info_set_handle(info, fh)
                    replied = fuse_reply_open(req, info)
                }
                if replied != 0 { fs.filesystem.releaseHandle(fh) } // the opener was interrupted: no RELEASE will come
            }
        }
        ops.read = { req, node, size, offset, info in
            server(req).reply(req, .read, node: node) { fs throws(Errno) in
                fs.noteRequestSize(size, offset: offset)
                let file = try fs.filesystem.file(forHandle: cachefs_file_info_handle(info!))
                fs.readsInFlight.add(1, ordering: .relaxed)
                defer { fs.readsInFlight.subtract(1, ordering: .releasing) }
                guard let observer = fs.readObserver else {
                    return replyData(req, try fs.filesystem.read(file, at: Int64(offset), count: size))
                }
                let start = monotonicNanoseconds()
                var tier = ReadTier.memory
                let slices = try fs.filesystem.read(file, at: Int64(offset), count: size, tier: &tier)
                observer.didRead(bytes: slices.reduce(0) { $0 + $1.range.count }, tier: tier, nanoseconds: monotonicNanoseconds() &- start)
                replyData(req, slices)
            }
        }
        ops.release = { req, _, info in
            server(req).filesystem.releaseHandle(cachefs_file_info_handle(info!))
            fuse_reply_err(req, 0)
        }
        ops.opendir = { req, node, info in
            server(req).reply(req, .opendir, node: node) { fs throws(Errno) in
                let handle = try fs.filesystem.openDirectoryHandle(node: node)
                cachefs_file_info_set_handle(info, handle)
                if fuse_reply_open(req, info) != 0 { fs.filesystem.releaseDirectoryHandle(handle) }
            }
        }
        ops.readdir = { req, node, size, offset, info in
            server(req).readDirectory(req, node: node, size: size, offset: offset, info: info!, withAttributes: false)
        }
        ops.readdirplus = { req, node, size, offset, info in
            server(req).readDirectory(req, node: node, size: size, offset: offset, info: info!, withAttributes: true)
        }
        ops.releasedir = { req, _, info in
            server(req).filesystem.releaseDirectoryHandle(cachefs_file_info_handle(info!))
            fuse_reply_err(req, 0)
        }
        ops.statfs = { req, node in
            server(req).reply(req, .statfs, node: node) { fs throws(Errno) in
                var statistics = try fs.filesystem.fileSystemStatistics()
                fuse_reply_statfs(req, &statistics)
            }
        }
        ops.getxattr = { req, node, name, size in
            server(req).reply(req, .getxattr, node: node) { fs throws(Errno) in
                try withBuffer(size) { buffer throws(Errno) in
                    let length = try fs.filesystem.extendedAttribute(of: node, named: name!, into: buffer)
                    if size == 0 { fuse_reply_xattr(req, length) } else { fuse_reply_buf(req, buffer.baseAddress, length) }
                }
            }
        }
        ops.listxattr = { req, node, size in
            server(req).reply(req, .listxattr, node: node) { fs throws(Errno) in
                try withBuffer(size) { buffer throws(Errno) in
                    let length = try fs.filesystem.extendedAttributeNames(of: node, into: buffer)
                    if size == 0 { fuse_reply_xattr(req, length) } else { fuse_reply_buf(req, buffer.baseAddress, length) }
                }
            }
        }
        ops.access = { req, node, mask in
            // Mode bits are checked by the kernel (default_permissions); only writing is refused here.
            if mask & W_OK != 0 { server(req).fail(req, .access, node: node, .readOnlyFileSystem) } else { fuse_reply_err(req, 0) }
        }

        // Everything that would modify the tree is refused. The mount is also
        // read-only, so the kernel normally refuses these before asking.
        ops.setattr = { req, node, _, _, _ in refuseWrite(req, .setattr, node: node) }
        ops.mknod = { req, parent, _, _, _ in refuseWrite(req, .mknod, node: parent) }
        ops.mkdir = { req, parent, _, _ in refuseWrite(req, .mkdir, node: parent) }
        ops.unlink = { req, parent, _ in refuseWrite(req, .unlink, node: parent) }
        ops.rmdir = { req, parent, _ in refuseWrite(req, .rmdir, node: parent) }
        ops.symlink = { req, _, parent, _ in refuseWrite(req, .symlink, node: parent) }
        ops.rename = { req, parent, _, _, _, _ in refuseWrite(req, .rename, node: parent) }
        ops.link = { req, node, _, _ in refuseWrite(req, .link, node: node) }
        ops.write = { req, node, _, _, _, _ in refuseWrite(req, .write, node: node) }
        ops.write_buf = { req, node, _, _, _ in refuseWrite(req, .write, node: node) }
        ops.create = { req, parent, _, _, _ in refuseWrite(req, .create, node: parent) }
        ops.setxattr = { req, node, _, _, _, _ in refuseWrite(req, .setxattr, node: node) }
        ops.removexattr = { req, node, _ in refuseWrite(req, .removexattr, node: node) }
        ops.fallocate = { req, node, _, _, _, _ in refuseWrite(req, .fallocate, node: node) }
        ops.copy_file_range = { req, node, _, _, _, _, _, _, _ in refuseWrite(req, .copyFileRange, node: node) }
        return ops
    }()

    /// Runs one operation, turning a thrown errno into the error reply (counted and logged: `fail`).
    @inline(__always)
    fileprivate func reply(_ req: fuse_req_t?, _ operation: FuseOperation, node: fuse_ino_t, _ body: (FuseServer) throws(Errno) -> Void) {
        do {
            try body(self)
        } catch {
            fail(req, operation, node: node, error)
        }
    }

    fileprivate func entry(node: UInt64, attributes: stat) -> fuse_entry_param {
        var entry = fuse_entry_param()
        entry.ino = node
        entry.attr = attributes
        entry.attr_timeout = configuration.metadataTimeout
        entry.entry_timeout = configuration.metadataTimeout
        return entry
    }

    fileprivate func readDirectory(
        _ req: fuse_req_t?, node: fuse_ino_t, size: Int, offset: off_t,
        info: UnsafeMutablePointer<fuse_file_info>, withAttributes: Bool
    ) {
        let operation: FuseOperation = withAttributes ? .readdirplus : .readdir
        let directory: OpenDirectory
        do {
            directory = try filesystem.directory(forHandle: cachefs_file_info_handle(info))
        } catch {
            return fail(req, operation, node: node, error)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        let start = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
        var used = 0
        do {
            try filesystem.readDirectory(directory, from: Int(offset), withAttributes: withAttributes, parent: node) { item in
                let remaining = size - used
                let needed: Int
                if withAttributes {
                    var entry = entry(node: item.node, attributes: item.attributes)
                    needed = fuse_add_direntry_plus(req, start + used, remaining, item.name, &entry, off_t(item.nextOffset))
                } else {
                    var attributes = item.attributes
                    needed = fuse_add_direntry(req, start + used, remaining, item.name, &attributes, off_t(item.nextOffset))
                }
                guard needed <= remaining else { return false }
                used += needed
                return true
            }
        } catch  where used == 0 {
            fail(req, operation, node: node, error)
            return
        } catch {
            // Entries already listed are worth returning; the error recurs on the next call.
        }
        fuse_reply_buf(req, start, used)
    }

    /// Logs the sizes of the first reads: what the kernel really sends after negotiation.
    fileprivate func noteRequestSize(_ size: Int, offset: off_t) {
        guard readsLogged.add(1, ordering: .relaxed).newValue <= 16 else { return }
        logger.debug("read request", metadata: ["size": "\(size)", "offset": "\(offset)"])
    }

    /// The session, while it is mounted, for notifications to the kernel.
    fileprivate var liveSession: OpaquePointer? { sessionForNotifications }

    /// Called by libfuse before the first request; see the kernel's FUSE_INIT.
    fileprivate func negotiate(_ connection: UnsafeMutablePointer<fuse_conn_info>) {
        let conn = connection.pointee
        logger.debug(
            "kernel connection",
            metadata: [
                "protocol": "\(conn.proto_major).\(conn.proto_minor)",
                "max_read": "\(conn.max_read)", "max_write": "\(conn.max_write)",
                "max_readahead": "\(conn.max_readahead)", "capable": "\(String(conn.capable, radix: 16))",
                "want": "\(String(conn.want, radix: 16))",
            ])
    }
}

/// Replies with the slices' bytes straight from cache memory: the kernel copies
/// them from the blocks, which the slices keep mapped until the reply returns.
private func replyData(_ req: fuse_req_t?, _ slices: [BlockSlice]) {
    withExtendedLifetime(slices) {
        var vectors = slices.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.bytes.baseAddress), iov_len: $0.bytes.count) }
        _ = fuse_reply_iov(req, &vectors, Int32(vectors.count))
    }
}

/// CLOCK_MONOTONIC through the vDSO: no system call, no allocation.
@inline(__always)
private func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
}

private func refuseWrite(_ req: fuse_req_t?, _ operation: FuseOperation, node: fuse_ino_t) {
    server(req).fail(req, operation, node: node, .readOnlyFileSystem)
}

@inline(__always)
private func server(_ req: fuse_req_t?) -> FuseServer {
    Unmanaged<FuseServer>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

/// Lends a scratch buffer of `size` bytes, or an empty one for a size query.
private func withBuffer(_ size: Int, _ body: (UnsafeMutableRawBufferPointer) throws(Errno) -> Void) throws(Errno) {
    guard size > 0 else { return try body(UnsafeMutableRawBufferPointer(start: nil, count: 0)) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
    defer { buffer.deallocate() }
    try body(buffer)
}
