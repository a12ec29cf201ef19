# Seed example 4. Using ProcessPoolExecutor for CPU-bound Tasks
# The only change from the original: concurrent.futures.ProcessPoolExecutor(max_workers=3)
# became zeropool's executor (plus `import zeropool`).
import concurrent.futures
import zeropool
import math

def worker(data):
    """Worker function that takes a list of numbers and calculates their sum."""
    print(f"Worker processing data with {len(data)} elements")
    result = sum(data)
    print(f"Worker completed processing, total: {result}")
    return result

def main():
    data_chunks = [range(1000), range(1000), range(1000)]
    
    with zeropool.Executor(max_workers=3) as executor:
        # Submit tasks to the executor
        future_to_data = {executor.submit(worker, chunk): chunk for chunk in data_chunks}
        
        # Process results
        for future in concurrent.futures.as_completed(future_to_data):
            chunk = future_to_data[future]
            try:
                result = future.result()
            except Exception as exc:
                print(f"Worker processing {chunk} generated an exception: {exc}")
            else:
                print(f"Worker processed {chunk} with total: {result}")

if __name__ == "__main__":
    main()
