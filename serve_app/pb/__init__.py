"""Generated gRPC/protobuf code for proto/. Regenerate with ``make proto``; never edit by hand."""
