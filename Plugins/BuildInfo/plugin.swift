import Foundation
import PackagePlugin

/// Runs Scripts/lib/build-info.sh before each build of a target: it writes BuildInfo.swift with
/// the commit of the source tree (`git rev-parse`), rewriting the file only when the text changed
/// so that an unchanged commit recompiles nothing. A prebuild command because the commit changes
/// without any input file SwiftPM could watch.
@main
struct BuildInfo: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "Generated")
        let script = context.package.directoryURL.appending(path: "Scripts/lib/build-info.sh")
        return [
            .prebuildCommand(
                displayName: "Stamping the git commit into \(target.name)",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [
                    script.path, context.package.directoryURL.path,
                    output.appending(path: "BuildInfo.swift").path,
                ],
                outputFilesDirectory: output)
        ]
    }
}
