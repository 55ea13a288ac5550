# One image for the whole workspace; docker-compose.yml picks the service with `command`.
FROM node:20-slim

# Corepack is not usable here, so pnpm is pinned to root package.json's packageManager version.
RUN npm i -g pnpm@10.34.8

WORKDIR /app
RUN chown node:node /app
USER node

# Manifests and lockfile first: the install layer is rebuilt only when dependencies change.
# Every workspace package's package.json must be listed, or the frozen install fails.
COPY --chown=node:node package.json pnpm-lock.yaml pnpm-workspace.yaml ./
COPY --chown=node:node packages/stream-kit/package.json packages/stream-kit/
COPY --chown=node:node packages/order-service/package.json packages/order-service/
COPY --chown=node:node packages/payment-service/package.json packages/payment-service/
COPY --chown=node:node packages/notification-service/package.json packages/notification-service/

# Services run TypeScript through tsx, and --prod=false keeps the toolchain whatever NODE_ENV says.
RUN pnpm install --frozen-lockfile --prod=false

COPY --chown=node:node . .

ENV NODE_ENV=production
EXPOSE 8080 8081 8082

# Default to the order service; docker-compose.yml sets the directory and command for each.
# node runs as PID 1 itself (not under pnpm, which does not pass SIGTERM on), so
# `docker stop` triggers the graceful shutdown.
WORKDIR /app/packages/order-service
CMD ["node", "--import", "tsx", "src/main.ts"]
