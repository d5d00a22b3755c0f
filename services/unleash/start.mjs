// Start the pinned Unleash server (see package.json) for unship's tests and local demos.
//
// Install once with `npm ci --prefix services/unleash`, then run `node services/unleash/start.mjs`.
// Configuration comes from the environment (Unleash's own variable names):
//   DATABASE_HOST, DATABASE_PORT, DATABASE_NAME, DATABASE_USERNAME, DATABASE_PASSWORD  (PostgreSQL 14+)
//   HTTP_HOST (default 127.0.0.1), HTTP_PORT (default 4242)
//   INIT_ADMIN_API_TOKENS    e.g. "*:*.some-admin-secret"              (read by Unleash itself)
//   INIT_BACKEND_API_TOKENS  e.g. "default:development.some-secret"    (read by Unleash itself)
//   LOG_LEVEL (default "warn")
// Version checks and telemetry are off: nothing leaves the machine. Unleash itself stops gracefully on SIGTERM.
import { start } from 'unleash-server';

const env = process.env;

await start({
    db: {
        host: env.DATABASE_HOST ?? '127.0.0.1',
        port: Number(env.DATABASE_PORT ?? 5432),
        user: env.DATABASE_USERNAME ?? 'postgres',
        password: env.DATABASE_PASSWORD ?? '',
        database: env.DATABASE_NAME ?? 'unleash',
        ssl: false,
    },
    server: {
        host: env.HTTP_HOST ?? '127.0.0.1',
        port: Number(env.HTTP_PORT ?? 4242),
    },
    authentication: {
        type: 'open-source',
        enableApiToken: true,
    },
    versionCheck: { enable: false },
    sendTelemetry: false,
    logLevel: env.LOG_LEVEL ?? 'warn',
});

