"""The end-to-end journey, written once for two targets: the embedded emulator (the default, in
`make test`) and a real AWS account (`make test-aws`, only when asked)."""
