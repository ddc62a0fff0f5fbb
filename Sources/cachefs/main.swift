import ArgumentParser

#if canImport(Glibc)
import Glibc
#endif

// Errors are one line on standard error with a non-zero exit; --help prints in full.
// `-o key=value` options, as mount(8) passes them, are read as the long options they name.
do {
    var command = try Cachefs.parseAsRoot(MountHelperArguments.translate(Array(CommandLine.arguments.dropFirst())))
    try command.run()
} catch {
    if Cachefs.exitCode(for: error) == .success { Cachefs.exit(withError: error) }
    let message = Cachefs.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    let line = "cachefs: \(message)\n"
    line.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
    exit(Cachefs.exitCode(for: error).rawValue)
}
