# One production image for all three services; docker-compose.yml picks the service with `command`.
# Two stages: `build` holds the whole toolchain and bundles each service into one file
# (`pnpm build`: dist/<service>.mjs with its source map); the final stage is node:20-slim plus those
# bundles and nothing else: no node_modules, no pnpm, no tsx, no tests, no bench.

FROM node:20-slim AS build

# Corepack is not usable here, so pnpm is pinned to root package.json's packageManager version.
RUN npm i -g pnpm@10.34.8

WORKDIR /build

# The lockfile alone decides what is downloaded (pnpm-workspace.yaml holds the install settings):
# this layer is rebuilt only when dependencies change, and no package is named here, so a new
# service needs no edit.
COPY pnpm-lock.yaml pnpm-workspace.yaml ./
RUN pnpm fetch

# The build context is what .dockerignore lets in: the manifests, the packages' src/ and the build
# script. NODE_ENV is unset in this stage, so the devDependencies the build needs (esbuild, tsx) are
# installed.
COPY . .
RUN pnpm install --offline --frozen-lockfile
RUN pnpm build

FROM node:20-slim

ENV NODE_ENV=production
WORKDIR /app
# The bundles hold every package they import; root owns them and the service cannot change them.
COPY --from=build /build/dist/ dist/
USER node
# No EXPOSE: the one image runs any service, on the PORT docker-compose.yml gives it.

# Default to the order service; docker-compose.yml names each service's bundle in `command`.
# node runs as PID 1 itself (not under a shell or pnpm, which do not pass SIGTERM on), so
# `docker stop` triggers the graceful shutdown. --enable-source-maps: stack traces name .ts lines.
CMD ["node", "--enable-source-maps", "dist/order-service.mjs"]
