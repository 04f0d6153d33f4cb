# runservice images: static binaries FROM scratch (no base image to pull). Build the binaries first
# (make docker-build does): CGO_ENABLED=0 go build -o bin/ ./cmd/...
# Targets: manager, executor, toolbox (docker build --target NAME).
FROM scratch AS manager
COPY bin/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]

FROM scratch AS executor
COPY bin/executor /executor
COPY bin/toolbox /toolbox
USER 65532:65532
ENTRYPOINT ["/executor"]

FROM scratch AS toolbox
COPY bin/toolbox /toolbox
ENTRYPOINT ["/toolbox"]
