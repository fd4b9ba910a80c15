#!/usr/bin/env bash
# Regenerate lrpflow_caffe/caffe_subset_pb2.py from lrpflow_caffe/caffe_subset.proto with protoc.
# Needs protoc: `pip install grpcio-tools` (provides `python -m grpc_tools.protoc`) or Debian's
# protobuf-compiler (`protoc`). Run from anywhere: plugins/lrpflow-caffe/tools/make_pb2.sh
set -euo pipefail
cd "$(dirname "$0")/../lrpflow_caffe"
if python -c "import grpc_tools" 2>/dev/null; then
    python -m grpc_tools.protoc -I. --python_out=. caffe_subset.proto
else
    protoc -I. --python_out=. caffe_subset.proto
fi
echo "wrote $(pwd)/caffe_subset_pb2.py"
