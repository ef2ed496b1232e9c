import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// `npm run dev` serves the app with the API of a running stack behind it (CHAT_ENTRY_URL,
// default the local entry); `deploy/local/up` builds it (`vite build`) for nginx to serve.
const entry = process.env.CHAT_ENTRY_URL ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir: process.env.CHAT_WEB_OUT ?? "dist",
    emptyOutDir: true,
    // No inline script or style may be needed: the entry's Content-Security-Policy forbids both.
    assetsInlineLimit: 0,
  },
  server: {
    proxy: { "/v1": { target: entry, ws: true, changeOrigin: false } },
  },
});
