// eslint for the TypeScript (lib/, test/, bench/, soak/, examples/) and the plain JavaScript
// (bin/, scripts/, examples/) of the package: eslint's and typescript-eslint's recommended
// rules, type-checked (through tsconfig.json) for the TypeScript; nothing stylistic, layout
// is not eslint's job here.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'build/', 'coverage/', 'docs/', 'prebuilds/'] },
  {
    files: ['lib/**/*.ts', 'test/**/*.ts', 'bench/**/*.ts', 'soak/**/*.ts', 'examples/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // The addon's functions and the listener hooks are declared as methods but use no `this`;
      // where a hook needs its listener, the tracker calls it with .call(listener).
      '@typescript-eslint/unbound-method': 'off',
      // An async function without await is how this code returns a promise that also turns a
      // synchronous throw into a rejection (conversions queued on a serializer, test doubles).
      '@typescript-eslint/require-await': 'off',
      // Messages interpolate GranuleRange (it has its own toString) and fields of JSON-shaped
      // records on purpose; no-base-to-string still catches an "[object Object]".
      '@typescript-eslint/restrict-template-expressions': 'off',
      // The code marks array reads with ! as if noUncheckedIndexedAccess were on (the index is
      // known to be in range); without that flag tsc calls them unnecessary.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // A caught value is rethrown as it came, whatever it is.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true, allowThrowingAny: true }],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Tests read JSON.parse of the CLI's output and child processes' reports (any) and
      // compare whole values with deepStrictEqual: the assertion is the type check.
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    files: ['bin/*.js', 'scripts/*.js', 'examples/*.js'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'commonjs', globals: globals.node },
  },
  {
    files: ['scripts/*.mjs'],
    extends: [js.configs.recommended],
    languageOptions: { sourceType: 'module', globals: globals.node },
  },
  ...layering(),
);

/**
 * The layering CONTRIBUTING.md describes ("Where things live"): each folder of lib/ imports
 * only from the folders before it in this list; nothing imports the package's entry point
 * from inside.
 */
function layering() {
  // vfio/ below memory/: a block attached in a worker registers the VFIO kinds, and nothing in
  // vfio/ needs a RAM block (the demo's DmaProbe, which does, is in vmm/). host/ is probe():
  // what KVM and VFIO offer here, asked by the CLI.
  const order = ['common', 'tracker', 'kvm', 'vfio', 'host', 'memory', 'vmm', 'cli'];
  // The error table (GuestmemErrorDetails) names the types of each code's details wherever
  // they are declared: type imports alone, erased from the JavaScript, so lib/common/ still
  // needs nothing above it when it runs.
  const typeImportsOnly = ['lib/common/errors.ts'];
  const rule = (part, index, allowTypeImports = false) => {
    const below = order.slice(index + 1);
    const forbidden = [
      ...(below.length > 0 ? [`^(\\.\\./)+(${below.join('|')})/`] : []),
      '^(\\.\\./)+index$',
    ];
    const options = {
      patterns: forbidden.map((regex) => ({
        regex,
        message: `lib/${part}/ may import only from ${order.slice(0, index).map((p) => `lib/${p}/`).join(', ') || 'nothing else in lib/'} (CONTRIBUTING.md, "Where things live")`,
        ...(allowTypeImports ? { allowTypeImports } : {}),
      })),
    };
    // typescript-eslint's form of the rule alone tells a type import from a value import.
    return allowTypeImports
      ? { 'no-restricted-imports': 'off', '@typescript-eslint/no-restricted-imports': ['error', options] }
      : { 'no-restricted-imports': ['error', options] };
  };
  return [
    ...order.map((part, index) => ({ files: [`lib/${part}/**/*.ts`], rules: rule(part, index) })),
    ...typeImportsOnly.map((file) => {
      const part = file.split('/')[1];
      return { files: [file], rules: rule(part, order.indexOf(part), true) };
    }),
  ];
}
