#!/usr/bin/env bash
# Regenerates sft/ (Python protobuf + gRPC code and mypy stubs) from proto/.
# Run from any directory; `make proto` calls this. The output is byte-for-byte
# reproducible: same inputs and tool versions (pinned in pyproject.toml's dev
# extra) give identical files. Never edit sft/ by hand.
set -euo pipefail

# Work from the repo root so every path below (and in the output) is relative.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
BIN_DIR="$(cd "$(dirname "$PYTHON")" && pwd)"
BUF="${BUF:-$BIN_DIR/buf}"
OUT=sft

if [[ ! -f proto/buf.yaml ]]; then
  echo "generate.sh: proto/buf.yaml not found; is this the sft repo?" >&2
  exit 1
fi

# Well-known types (google/protobuf/*.proto) bundled with grpcio-tools.
WKT_INCLUDE="$("$PYTHON" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

# Sorted, relative file list, so protoc sees the same order everywhere.
mapfile -t PROTOS < <(cd proto && find sft -name '*.proto' -type f | LC_ALL=C sort)
if [[ ${#PROTOS[@]} -eq 0 ]]; then
  echo "generate.sh: no .proto files under proto/sft" >&2
  exit 1
fi

# Generate into a scratch directory and swap it in only on success, so a failed
# run never leaves a half-written sft/.
TMP="$(mktemp -d .sft-gen.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

# mypy-protobuf options (it matches them as substrings of the parameter):
#   only_async  types stubs and servicers for grpc.aio only (async def servicer
#               methods, grpc.aio.ServicerContext, stubs over a grpc.aio.Channel);
#               every sft component runs on grpc.aio. (Its README spells it
#               `async_only`, which the 5.1.0 code does not recognise.)
#   generate_concrete_servicer_stubs
#               servicer methods are not abstract in the stubs, matching the
#               generated base classes, whose unimplemented RPCs answer
#               UNIMPLEMENTED: a servicer may implement a contract partially.
#   quiet       no "Writing mypy to ..." lines.
"$PYTHON" -m grpc_tools.protoc \
  -I proto \
  -I "$WKT_INCLUDE" \
  --plugin=protoc-gen-mypy="$BIN_DIR/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$BIN_DIR/protoc-gen-mypy_grpc" \
  --python_out="$TMP" \
  --grpc_python_out="$TMP" \
  --mypy_out=quiet:"$TMP" \
  --mypy_grpc_out=only_async,generate_concrete_servicer_stubs,quiet:"$TMP" \
  "${PROTOS[@]/#/proto/}"

# Make every generated directory a regular package.
while IFS= read -r dir; do
  : > "$dir/__init__.py"
done < <(find "$TMP/$OUT" -type d | LC_ALL=C sort)
cat > "$TMP/$OUT/__init__.py" <<'PY'
"""Generated from proto/ by `make proto`; do not edit by hand."""
PY
: > "$TMP/$OUT/py.typed"

# Deterministic permissions regardless of umask.
find "$TMP/$OUT" -type d -exec chmod 0755 {} +
find "$TMP/$OUT" -type f -exec chmod 0644 {} +

rm -rf "$OUT"
mv "$TMP/$OUT" "$OUT"

# Fail `make proto` on lint errors (buf reads proto/buf.yaml).
(cd proto && "$BUF" lint)
echo "generated ${#PROTOS[@]} proto files into $OUT/"
