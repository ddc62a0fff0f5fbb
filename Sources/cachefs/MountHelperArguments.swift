/// Accepts the `-o key=value,flag` form that mount(8) and mount.fuse3 use, so
/// that `mount -t fuse.cachefs SRC DST -o capacity=20G` and an /etc/fstab line work.
///
/// Each option becomes the long option of the same name (`block_size=4M` →
/// `--block-size 4M`, `allow_other` → `--allow-other`); generic mount options
/// that do not apply to a read-only FUSE mirror are dropped.
enum MountHelperArguments {
    static let ignored: Set<String> = [
        "rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "auto", "noauto",
        "user", "nouser", "users", "_netdev", "nofail", "defaults", "atime", "noatime",
        "relatime", "norelatime", "strictatime", "lazytime", "sync", "async",
    ]

    static func translate(_ arguments: [String]) -> [String] {
        var translated: [String] = []
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            let options: Substring
            if argument == "-o", let next = remaining.popFirst() {
                options = Substring(next)
            } else if argument.hasPrefix("-o"), argument.count > 2, !argument.hasPrefix("--") {
                options = argument.dropFirst(2)
            } else {
                translated.append(argument)
                continue
            }
            for option in options.split(separator: ",") where !option.hasPrefix("x-") {
                let parts = option.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(parts[0])
                guard !name.isEmpty else {
                    translated.append("-o" + option) // no option name: left for the parser to refuse as unknown
                    continue
                }
                guard !ignored.contains(name) else { continue }
                translated.append("--" + name.split(separator: "_", omittingEmptySubsequences: false).joined(separator: "-"))
                if parts.count == 2 { translated.append(String(parts[1])) }
            }
        }
        return translated
    }
}
