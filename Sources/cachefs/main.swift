#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser

// Errors are one line on standard error with a non-zero exit; --help prints in full.
do {
    var command = try Cachefs.parseAsRoot()
    try command.run()
} catch {
    if Cachefs.exitCode(for: error) == .success { Cachefs.exit(withError: error) }
    let message = Cachefs.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    let line = "cachefs: \(message)\n"
    line.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
    exit(Cachefs.exitCode(for: error).rawValue)
}
