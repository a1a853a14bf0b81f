import Foundation
import PackagePlugin

/// Runs Scripts/lib/build-info.sh, which writes BuildInfo.swift with the commit of the source tree
/// (`git rev-parse`), whenever git's HEAD, the branch it names or the index changes (a commit
/// rewrites the index), and on the first build of a fresh clone. The script rewrites the file
/// only when its text changes, so an unchanged commit recompiles nothing. Without a .git
/// directory (a source tarball) it runs once and writes "unknown".
///
/// Not a prebuild command: SwiftPM runs those only when it re-plans the build (a manifest
/// change), so the commit went stale after each `git commit`.
@main
struct BuildInfo: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let source = context.package.directoryURL
        let output = context.pluginWorkDirectoryURL.appending(path: "Generated").appending(path: "BuildInfo.swift")
        return [
            .buildCommand(
                displayName: "Stamping the git commit into \(target.name)",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [source.appending(path: "Scripts/lib/build-info.sh").path, source.path, output.path],
                inputFiles: BuildInfo.gitFiles(source) + [source.appending(path: "Scripts/lib/build-info.sh")],
                outputFiles: [output])
        ]
    }

    /// HEAD, the index and the ref HEAD names, in the git directory of `source` (a `.git` file, as
    /// in a worktree, points to it; a worktree's refs live in the common directory); only those
    /// that exist.
    static func gitFiles(_ source: URL) -> [URL] {
        let dotGit = source.appending(path: ".git")
        var gitDirectory = dotGit
        if let text = try? String(contentsOf: dotGit, encoding: .utf8), text.hasPrefix("gitdir:") {
            let path = text.dropFirst("gitdir:".count).trimmingCharacters(in: .whitespacesAndNewlines)
            gitDirectory = path.hasPrefix("/") ? URL(fileURLWithPath: path) : source.appending(path: path)
        }
        var common = gitDirectory
        if let text = try? String(contentsOf: gitDirectory.appending(path: "commondir"), encoding: .utf8) {
            let path = text.trimmingCharacters(in: .whitespacesAndNewlines)
            common = path.hasPrefix("/") ? URL(fileURLWithPath: path) : gitDirectory.appending(path: path)
        }
        var files = [gitDirectory.appending(path: "HEAD"), gitDirectory.appending(path: "index")]
        if let head = try? String(contentsOf: gitDirectory.appending(path: "HEAD"), encoding: .utf8),
            head.hasPrefix("ref:")
        {
            let ref = head.dropFirst("ref:".count).trimmingCharacters(in: .whitespacesAndNewlines)
            files.append(common.appending(path: ref))
            files.append(common.appending(path: "packed-refs"))
        }
        return files.filter { FileManager.default.fileExists(atPath: $0.path) }
    }
}
