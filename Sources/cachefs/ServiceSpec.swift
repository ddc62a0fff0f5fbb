import ControlPlane
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The cache mounts of a PAI-EAS service description (`cachefs mount --spec FILE`), read as the
/// reference product's users already write them: the whole service JSON, or just its `storage`
/// list, where an entry with a `cache` object is a cachefs mount:
///
///     {"mount_path": "/data-fast", "cache": {"path": "/data-slow", "capacity": "20G"}}
///
/// is `cachefs /data-slow /data-fast --capacity 20G`. Entries without `cache` (an `oss`, `nas`
/// or image mount) are the platform's to mount, not cachefs's: they are skipped, with a line
/// each. Every problem is one line naming the file and the entry.
struct ServiceSpec: Equatable {
    struct CacheMount: Equatable {
        var source: String
        var mountpoint: String
        var capacity: ByteCount
    }

    var mounts: [CacheMount]
    /// One line per storage entry that is not a cache, saying what it is.
    var skipped: [String]

    /// The fields of a `cache` object, as the reference product documents them.
    static let cacheFields: Set<String> = ["path", "capacity"]

    init(contentsOf path: String) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw UsageError("spec \(path): \(String(cString: strerror(errno)))") }
        let data: Data
        do {
            data = try FileHandle(fileDescriptor: descriptor, closeOnDealloc: true).readToEnd() ?? Data()
        } catch {
            throw UsageError("spec \(path): cannot be read (\(Self.firstLine(of: error)))")
        }
        try self.init(json: data, named: path)
    }

    init(json data: Data, named name: String) throws {
        func refuse(_ problem: String) -> UsageError { UsageError("spec \(name): \(problem)") }
        let document: Any
        do {
            document = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw refuse("not JSON (\(Self.firstLine(of: error)))")
        }
        let storage: [Any]
        switch document {
        case let list as [Any]: storage = list
        case let service as [String: Any] where service["storage"] != nil:
            guard let list = service["storage"] as? [Any] else { throw refuse("\"storage\" is not a list") }
            storage = list
        case let entry as [String: Any] where entry["mount_path"] != nil: storage = [entry]
        default:
            throw refuse("no \"storage\" list: give a PAI-EAS service JSON, or its storage list")
        }
        mounts = []
        skipped = []
        for (index, item) in storage.enumerated() {
            guard let entry = item as? [String: Any] else { throw refuse("storage entry \(index + 1) is not an object") }
            let mountPath = entry["mount_path"] as? String
            let label = "storage entry \(index + 1)" + (mountPath.map { " (mount_path \($0))" } ?? "")
            guard let cacheValue = entry["cache"] else {
                let kinds = entry.keys.filter { $0 != "mount_path" }.sorted().map { kind in
                    ((entry[kind] as? [String: Any])?["path"] as? String).map { "\(kind) \($0)" } ?? kind
                }
                skipped.append(
                    "skipping \(label): no cache object (\(kinds.isEmpty ? "nothing else" : kinds.joined(separator: ", "))); "
                        + "cachefs mounts only cache entries")
                continue
            }
            guard let cache = cacheValue as? [String: Any] else { throw refuse("\(label): cache is not an object") }
            if let unknown = cache.keys.sorted().first(where: { !Self.cacheFields.contains($0) }) {
                throw refuse(
                    "\(label): unknown field \"\(unknown)\" in cache (cachefs knows \(Self.cacheFields.sorted().joined(separator: " and ")))"
                )
            }
            guard let mountPath, mountPath.hasPrefix("/") else { throw refuse("\(label): mount_path must be an absolute path") }
            guard let source = cache["path"] as? String, source.hasPrefix("/") else {
                throw refuse("\(label): cache.path must be an absolute path (the directory to cache)")
            }
            guard let capacityText = cache["capacity"] as? String else {
                throw refuse("\(label): cache.capacity must be a size such as \"20G\"")
            }
            guard let capacity = ByteCount(argument: capacityText) else {
                throw refuse("\(label): cache.capacity \"\(capacityText)\" is not a size; use e.g. \"20G\", \"512M\"")
            }
            let mountpoint = MountSettings.absolute(mountPath)
            if mounts.contains(where: { $0.mountpoint == mountpoint }) { throw refuse("\(label): a second cache at the same mount_path") }
            mounts.append(CacheMount(source: source, mountpoint: mountpoint, capacity: capacity))
        }
        guard !mounts.isEmpty else { throw refuse("no storage entry has a cache object: nothing to mount") }
    }

    private static func firstLine(of error: Error) -> String {
        let text = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
        return text.split(separator: "\n").first.map(String.init) ?? text
    }
}
