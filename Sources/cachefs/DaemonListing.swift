import ControlPlane
import MirrorFS

/// `cachefs ls`: what this instance's memory holds of the files under the paths (see ListingAPI.swift).
extension DaemonControl {
    func list(_ request: ListRequest) throws(ControlRequestError) -> ListAnswer {
        var answer = ListAnswer()
        var listed: Set<String> = [], directories: Set<String> = []
        for path in request.paths {
            do {
                let (found, walked) = try filesystem.cacheListing(atRelativePath: path)
                // Overlapping paths list a file once.
                for file in found where request.paths.count == 1 || listed.insert(file.path).inserted {
                    let residency = file.residency
                    answer.append(
                        Listing.File(
                            path: file.path, size: file.version.size, cachedBytes: Int64(residency.cachedBytes),
                            pinned: residency.pinned, held: residency.held, lastRead: residency.lastUsed))
                }
                directories.formUnion(walked)
            } catch {
                throw Self.explain(error, path: path)
            }
        }
        answer.directories = directories.sorted()
        return answer
    }
}
