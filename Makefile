# The two commands of the README, and a few helpers. Everything here runs as root (netns, macvtap links).
CARGO ?= cargo

.PHONY: test sandbox tools crds images bench fmt lint

## Run every test: builds the Go test tools (cached), then the whole workspace's tests.
test: tools
	$(CARGO) build --workspace --bins --locked
	$(CARGO) test --workspace --locked
	# The image build (static musl release binaries + buildah) is slow, so it is #[ignore]d in the plain run.
	$(CARGO) test --locked -p macvtap-e2e --test images -- --include-ignored

## Bring up the sandbox cluster and attach a pod through the CNI (KEEP=1 leaves it running).
sandbox: tools
	$(CARGO) build --workspace --bins --locked
	$(CARGO) run --locked -p macvtap-e2e --bin sandbox -- $(if $(KEEP),--keep,)

## Install missing Debian packages / Rust parts, then build kube-apiserver, etcd, kubectl, helm, Multus and kube-ovn
## from the Go module proxy (cached).
tools:
	e2e/tools/install-deps.sh
	e2e/tools/build-tools.sh

## Regenerate the CRD YAML from the Rust types.
crds:
	$(CARGO) run -p macvtap-api --bin crdgen

## Container images as OCI archives (buildah, FROM scratch).
images:
	images/build.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
