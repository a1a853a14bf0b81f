// Placeholder entry point until the command tree lands.
@main struct Tunctl { static func main() {} }
