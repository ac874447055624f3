'use strict'
// `npm install` step of kinesis-butler: uses the native addon when one is there (a
// prebuilt `*.node` in the package), otherwise builds it with cargo from the checkout
// the package was installed from (`npm install ./bindings/node`). Without Rust it stops
// with a message saying what to install.
//
// Env: KINESIS_BUTLER_BUILD_PROFILE=debug (a faster, unoptimised build),
// KINESIS_BUTLER_SKIP_BUILD=1 (do nothing; the addon is provided some other way).

const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const here = path.resolve(__dirname, '..')
const say = (text) => console.error(`kinesis-butler: ${text}`)

function loads() {
  try {
    require(path.join(here, 'native.js'))
    return true
  } catch {
    return false
  }
}

/** The file name napi-rs's loader (native.js) looks for on this platform. */
function addonName() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const glibc = process.report?.getReport?.().header?.glibcVersionRuntime
    return `kinesis-butler.linux-${arch}-${glibc ? 'gnu' : 'musl'}.node`
  }
  if (platform === 'win32') return `kinesis-butler.win32-${arch}-msvc.node`
  return `kinesis-butler.${platform}-${arch}.node`
}

function fail(text) {
  say(text)
  process.exit(1)
}

function main() {
  if (process.env.KINESIS_BUTLER_SKIP_BUILD) return
  if (loads()) return
  const name = addonName()
  if (!fs.existsSync(path.join(here, 'Cargo.toml'))) {
    fail(`no prebuilt native addon for ${process.platform}-${process.arch} in this package, and no Rust sources to build one. Install from a checkout of the repository (npm install ./bindings/node) with Rust installed.`)
  }
  const cargo = process.env.CARGO || 'cargo'
  const version = spawnSync(cargo, ['--version'], { encoding: 'utf8' })
  if (version.error || version.status !== 0) {
    fail(`no prebuilt native addon for ${process.platform}-${process.arch}, and Rust is not installed to build it (\`${cargo} --version\` failed). Install Rust from https://rustup.rs, then run \`npm rebuild kinesis-butler\` (or install again).`)
  }
  const profile = process.env.KINESIS_BUTLER_BUILD_PROFILE === 'debug' ? 'debug' : 'release'
  say(`building the native addon with ${version.stdout.trim()} (${profile}; the first build takes a few minutes)`)
  const args = ['build', '-p', 'kinesis-butler-node', '--message-format=json-render-diagnostics']
  if (profile === 'release') args.push('--release')
  const build = spawnSync(cargo, args, { cwd: here, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 * 1024 * 1024 })
  if (build.error || build.status !== 0) fail(`cargo build failed (${build.error ? build.error.message : `exit ${build.status}`}); see the messages above.`)
  let library
  for (const line of build.stdout.split('\n')) {
    if (!line.startsWith('{')) continue
    const message = JSON.parse(line)
    if (message.reason === 'compiler-artifact' && message.target && message.target.name === 'kinesis_butler_node') {
      library = message.filenames.find((f) => /\.(so|dylib|dll)$/.test(f)) || library
    }
  }
  if (!library) fail('cargo built no kinesis_butler_node library')
  fs.copyFileSync(library, path.join(here, name))
  if (!loads()) fail(`the built addon ${name} does not load`)
  say(`built ${name}`)
}

main()
