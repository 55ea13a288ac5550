// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    // dist/: `pnpm build`'s generated bundles.
    ignores: [
      '**/node_modules/**',
      'dist/**',
      '**/.scratch/**',
      'packages/stream-kit/test/.readme-sample-*.ts',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      // Unused parameters prefixed with `_` are deliberate (Express needs a 4-argument error handler).
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
);
