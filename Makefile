GO ?= go
TEST_FLAGS ?= -race -timeout 15m
# scripts/install-test-deps.sh installs this exact version when it is missing.
STATICCHECK ?= $(shell $(GO) env GOPATH)/bin/staticcheck

.PHONY: build run test lint bench bench-deps chaos clean deps image

build:
	$(GO) build -o bin/balancer ./balancer
	$(GO) build -o bin/node ./node

# A local cluster: balancer on 127.0.0.1:8080 and three nodes. Ctrl-C stops it.
run: build
	scripts/run-local.sh

# ringcast:latest (both binaries, FROM scratch) and ringcast-redis:latest,
# the images docker-compose.yml runs; no registry needed.
image:
	GO=$(GO) scripts/deploy/image.sh ringcast:latest
	scripts/deploy/redis-image.sh ringcast-redis:latest

deps:
	scripts/install-test-deps.sh

test: deps lint
	$(GO) test $(TEST_FLAGS) ./...

# gofmt, go vet, staticcheck, and go.mod/go.sum exactly as `go mod tidy` leaves them.
lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); exit 1)
	$(GO) vet ./...
	@test -x "$(STATICCHECK)" || (echo "lint: $(STATICCHECK) missing: run make deps"; exit 1)
	$(STATICCHECK) ./...
	@$(GO) mod tidy -diff || (echo "lint: go.mod/go.sum differ from what go mod tidy writes (diff above)"; exit 1)

# The peers the comparison benchmarks need (nginx-light, haproxy, wrk); not
# part of make test.
bench-deps:
	scripts/install-test-deps.sh bench

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 2s ./pkg/...

# A 60 s chaos scenario against a real local cluster; non-zero exit if an
# invariant broke. Flags: go run ./scripts/chaos -h
chaos:
	$(GO) run ./scripts/chaos -duration 60s

clean:
	rm -rf bin
