# One image holds both binaries; docker-compose.yml picks the command.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/balancer ./balancer && \
    CGO_ENABLED=0 go build -trimpath -o /out/node ./node

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/balancer /out/node /usr/local/bin/
USER nonroot
