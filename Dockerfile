# syntax=docker/dockerfile:1
# tokenpoold and upstream-sim: static binaries in a small non-root image.
#   docker build -t tokenpool .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# ci: build command (.ci/run runs the next line as it stands; keep it one line)
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o bin/ ./cmd/tokenpoold ./cmd/upstream-sim

# distroless/static: CA certificates (for https://api.orga-ai.com), tzdata,
# a nonroot user (65532), no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/bin/tokenpoold /src/bin/upstream-sim /usr/local/bin/
USER nonroot:nonroot
# Metrics on a port of their own (9464), never the API's. Only 8080 is
# exposed, so `docker run -P` publishes the API alone; let only the scraper
# reach 9464 (the compose file's Prometheus does).
ENV TOKENPOOL_ADDR=:8080 TOKENPOOL_METRICS_ADDR=:9464
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/tokenpoold", "-healthcheck"]
ENTRYPOINT ["/usr/local/bin/tokenpoold"]
